"""`python -m catsdogs_pl.serving.sign`: sign, once, a version registered before catsdogs signed them.

publish signs every version's servable export (model.sig, catsdogs_pl/signing.py), and package,
deploy and the handler refuse one that does not verify, so a version registered earlier serves
nothing until it is signed. This downloads its export, adds model.onnx where the exporter and a
runtime are installed (what package added to such archives then), signs it with the private key
($CATSDOGS_SIGNING_KEY or the state folder's) and logs the new files to the version's run beside
the export. Sign only versions whose artifacts you trust as they are now: signing says "these
bytes", not "these bytes are the ones training wrote". A signed version is verified, not signed
again.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from catsdogs_pl import places, registry, servable, signing
from catsdogs_pl.errors import exit_code


def sign_export(folder: Path) -> Path:
    """Complete an export as package completed unsigned ones (model.onnx where it can), then sign
    every file of it with the private key. Returns `folder`."""
    if not (folder / servable.ONNX).exists():
        net, pre = servable.load(folder)
        servable.export_onnx(net, pre.image_size, folder)
    signing.sign(folder, signing.private_key(places.home()))
    return folder


def sign_version(
    version: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
    mlflow: registry.MlflowSettings | None = None,
) -> str:
    """Sign the servable export of one registry version in its run; says what it did."""
    mlflow = mlflow or registry.MlflowSettings.from_config()
    client = MlflowClient(registry.resolve_tracking_uri(mlflow.tracking_uri))
    version, run_id = registry.resolve_version(
        client, mlflow.registered_model, version, alias, run_id
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(run_id, "servable", tmp))
        if (folder / signing.SIGNATURE).exists():
            signing.verify(folder, signing.public_key(places.home()))
            return f"v{version}: already signed, and it verifies"
        before = {p.name for p in folder.iterdir()}
        sign_export(folder)
        added = sorted({p.name for p in folder.iterdir()} - before)
        for name in added:
            client.log_artifact(run_id, str(folder / name), "servable")
    return f"v{version}: signed ({', '.join(added)} logged to runs:/{run_id}/servable)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catsdogs_pl.serving.sign", description=__doc__)
    registry.add_version_arguments(parser)
    args = parser.parse_args(argv)
    print(sign_version(args.model_version, args.alias, args.run_id, registry.store_of(args)))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
