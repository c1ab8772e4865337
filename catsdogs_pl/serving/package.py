"""`python -m catsdogs_pl.serving.package`: a registered version -> `model-store/catsdogs_vN-<key>.mar`.

The `.mar` version is the MLflow registered version, so `/predictions/catsdogs/N` serves exactly
registry version N. The archive holds the servable export of the version's run, the handler, the
source files it imports (copied from the training code under names of their own), and
`identity.json`: registered model, version, run id and the weights' digest. The key in its name
is a digest of that identity, so "v1" of another tracking store is another archive, and
TorchServe's modelUrl says which one it serves.

An export that does not verify against its signature (catsdogs_pl/signing.py) is refused before
anything is archived, and so is an archive that does not (`verify_archive`, what deploy runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow import MlflowClient

from catsdogs_pl import places, registry, servable, signing
from catsdogs_pl.contracts import ForwardPass
from catsdogs_pl.errors import CatsDogsError, exit_code

CODE = places.ROOT / "catsdogs_pl"
SOURCES = {  # file shipped in the .mar -> where it comes from; the handler imports these names
    "catsdogs_predictor.py": CODE / "predictor.py",
    "catsdogs_servable.py": CODE / "servable.py",
    "catsdogs_contracts.py": CODE / "contracts.py",
    "catsdogs_capture.py": CODE / "capture.py",
    "catsdogs_errors.py": CODE / "errors.py",
    "catsdogs_preprocessing.py": CODE / "preprocessing.py",
    "catsdogs_signing.py": CODE / "signing.py",
    "catsdogs_stats.py": CODE / "monitoring" / "stats.py",
    **{f"catsdogs_{m}.py": CODE / "models" / f"{m}.py" for m in servable.NETWORKS.values()},
}


IDENTITY = "identity.json"


@dataclass(frozen=True)
class Identity:
    """What an archive serves. `run_id` is "" for an archive packaged from a local export."""

    registered_model: str
    version: str
    run_id: str
    weights_sha256: str

    @property
    def key(self) -> str:
        """12 hex digits naming the archive: the same registry version from another store (another
        run) or other weights give another name."""
        text = "/".join((self.registered_model, self.version, self.run_id or self.weights_sha256))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_identity(mar: Path) -> Identity | None:
    """The identity inside an archive (None for an archive built before identities existed)."""
    with zipfile.ZipFile(mar) as zf:
        if IDENTITY not in zf.namelist():
            return None
        return Identity(**json.loads(zf.read(IDENTITY)))


def read_forward(mar: Path) -> str:
    """What computes an archive's answers, as one line: the gate's accepted forward pass, or
    float32 for an archive without one."""
    with zipfile.ZipFile(mar) as zf:
        if ForwardPass.FILE in zf.namelist():
            return ForwardPass.from_json(zf.read(ForwardPass.FILE)).describe()
        return "float32 (no forward gate)"


def stage(export_dir: Path, out: Path) -> Path:
    """The model folder exactly as TorchServe unpacks it: handler, sources, and every file of
    the export with its signature, once they verify with the state folder's public key (or
    $CATSDOGS_VERIFY_KEY) and load."""
    signing.verify(export_dir, signing.public_key(places.home()))
    servable.load(export_dir)  # refuse a broken export before it reaches a server
    shutil.copytree(export_dir, out, dirs_exist_ok=True)  # what was signed, no more, no less
    for name, source in SOURCES.items():
        shutil.copy(source, out / name)
    shutil.copy(places.HANDLER, out / places.HANDLER.name)
    shutil.copy(places.MODEL_CONFIG, out / places.MODEL_CONFIG.name)
    return out


def verify_archive(mar: Path) -> str:
    """Refuse `mar` unless its export's files are the signed ones (as a worker checks them);
    says what verified them."""
    key = signing.public_key(places.home())
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(mar) as zf:
            zf.extractall(tmp)
        signing.verify(Path(tmp), key, signing.archive_files(Path(tmp)))
    return f"signature verified with {key}"


def build_mar(
    export_dir: Path, version: str, store: Path, registered_model: str = "", run_id: str = ""
) -> Path:
    """Archive `export_dir` as `store/catsdogs_v<version>-<key>.mar` with torch-model-archiver."""
    store.mkdir(parents=True, exist_ok=True)
    weights = hashlib.sha256((export_dir / servable.WEIGHTS).read_bytes()).hexdigest()
    identity = Identity(registered_model or places.MODEL_NAME, str(version), run_id, weights)
    with tempfile.TemporaryDirectory() as tmp:
        staged = stage(export_dir, Path(tmp) / "model")
        (staged / IDENTITY).write_text(json.dumps(asdict(identity), indent=2))
        own = (servable.WEIGHTS, places.HANDLER.name, places.MODEL_CONFIG.name)  # named below
        extra = [p for p in staged.iterdir() if p.name not in own]
        cmd = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name",
            places.MODEL_NAME,
            "--version",
            str(version),
            "--serialized-file",
            str(staged / servable.WEIGHTS),
            "--handler",
            str(staged / places.HANDLER.name),
            "--extra-files",
            ",".join(map(str, extra)),
            "--config-file",
            str(staged / places.MODEL_CONFIG.name),
            "--export-path",
            tmp,
            "--force",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise CatsDogsError(
                f"torch-model-archiver failed on {export_dir}: {done.stderr[-2000:]}"
            )
        target = store / places.mar_name(version, identity.key)
        partial = target.with_name(f".{target.name}.partial")  # a reader never sees half of it
        shutil.move(Path(tmp) / f"{places.MODEL_NAME}.mar", partial)
        partial.replace(target)
    return target


def package_version(
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    export_dir: Path | None = None,
    mlflow: registry.MlflowSettings | None = None,
    force: bool = False,
) -> tuple[str, Path]:
    """Build (or reuse, when its identity is the same) the archive of one version of
    `mlflow.registered_model` (default: the fit config's); returns (version, .mar path)."""
    store = places.model_store()
    if export_dir is not None:
        version = version or "1"
        return version, build_mar(Path(export_dir), version, store)
    mlflow = mlflow or registry.MlflowSettings.from_config()
    client = MlflowClient(registry.resolve_tracking_uri(mlflow.tracking_uri))
    version, run_id = registry.resolve_version(
        client, mlflow.registered_model, version, alias, run_id
    )
    key = Identity(mlflow.registered_model, version, run_id, "").key
    target = store / places.mar_name(version, key)
    if target.exists() and not force:
        return version, target
    with tempfile.TemporaryDirectory() as tmp:
        folder = client.download_artifacts(run_id, "servable", tmp)
        return version, build_mar(Path(folder), version, store, mlflow.registered_model, run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m catsdogs_pl.serving.package", description=__doc__
    )
    registry.add_version_arguments(parser)
    parser.add_argument("--export-dir", type=Path, help="a local servable export folder instead")
    parser.add_argument("--force", action="store_true", help="rebuild an existing archive")
    args = parser.parse_args(argv)
    version, path = package_version(
        args.model_version,
        args.alias,
        args.run_id,
        args.export_dir,
        None if args.export_dir else registry.store_of(args),
        args.force,
    )
    print(f"version {version}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
