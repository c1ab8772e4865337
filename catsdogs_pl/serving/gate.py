"""The promotion gate of `deploy --gate DIR`: served versions scored on photos the user trusts.

A version is judged by what the server answers, through `/predictions/catsdogs/N`, handler and
preprocessing included, not by its training metrics: a version that rejects or misreads real uploads
cannot become the default. DIR holds `DIR/<class>/*`, one folder per class of the model. The figures,
and which photos they were computed on (a hash of DIR), go to MLflow, so the registry says why a
version is, or is not, the default.
"""

from __future__ import annotations

import hashlib
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from catsdogs_pl import places, registry
from catsdogs_pl.contracts import Preprocessing
from catsdogs_pl.errors import ConfigError, MissingError, UnreachableError
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.predict import answer_line, predict

EPSILON = 1e-9  # accuracies are ratios of counts: equal figures must not fail on rounding

Photos = list[tuple[Path, str]]  # (photo, its true class)


def archive_classes(mar: Path) -> list[str]:
    """The classes an archive predicts, in index order: what the gate's folders must be named."""
    with zipfile.ZipFile(mar) as archive:
        return list(Preprocessing.from_json(archive.read(Preprocessing.FILE)).classes)


def load_photos(folder: Path, classes: list[str]) -> Photos:
    """Every file of `folder/<class>/`, sorted. The class folders must be exactly the model's
    classes: a gate on other labels would measure nothing."""
    if not folder.is_dir():
        raise MissingError(f"--gate {folder}: no such folder")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ConfigError(f"--gate {folder} has no class folders: put photos in {folder}/<class>/")
    if set(found) != set(classes):
        raise ConfigError(
            f"--gate {folder}: class folders {found} are not the model's classes {sorted(classes)}"
        )
    photos = [
        (photo, name)
        for name in found
        for photo in sorted((folder / name).iterdir())
        if photo.is_file() and not photo.name.startswith(".")
    ]
    if not photos:
        raise ConfigError(f"--gate {folder}: its class folders {found} hold no photo")
    return photos


def folder_sha256(folder: Path, photos: Photos) -> str:
    """sha256 over the sorted relative paths and the bytes of the photos: which photos a recorded
    score was computed on (a path and its length are hashed before the bytes, so no two folders
    collide by moving bytes between files)."""
    digest = hashlib.sha256()
    for rel in sorted(photo.relative_to(folder).as_posix() for photo, _ in photos):
        data = (folder / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


@dataclass
class Score:
    """What one served version got right on the gate photos; a failed request counts as wrong."""

    version: str
    count: int
    correct: int = 0
    failures: list[str] = field(default_factory=list)  # one line each: photo, status, answer

    @property
    def acc(self) -> float:
        return self.correct / self.count


def score(version: str, photos: Photos) -> Score:
    """Send every photo to `/predictions/catsdogs/<version>`. Anything but a 200 with a label is a
    failure, a 400 included: the photos are trusted, so a rejection is the version's fault. A
    request that cannot reach the server, or no answer at all, says nothing about the version:
    UnreachableError, and no figure is recorded."""
    result = Score(version, len(photos))
    unanswered = 0
    for photo, label in photos:
        name = Path(label, photo.name)  # as the user sees it in DIR
        try:
            status, answer = predict(photo, version=version)
        except ts.TorchServeError as exc:
            if _not_sent(exc) or unanswered + 1 == result.count:  # or none answered at all
                raise _unreachable(version, exc) from exc
            result.failures.append(f"{name}: {exc}")  # sent, then no answer: may be the version's
            unanswered += 1
            continue
        if status != 200 or not isinstance(answer, dict) or "label" not in answer:
            result.failures.append(answer_line(name, status, answer)[:300])
            continue
        result.correct += answer["label"] == label
    return result


def _not_sent(exc: ts.TorchServeError) -> bool:
    """Whether the request never got to the server (a wrong address, a stopped server): urllib
    wraps the errors of connecting and sending in URLError, not a reset or timeout after sending
    (a worker that hangs or dies). The first such request ends the gate: the rest would only wait
    for their own timeouts."""
    cause = exc.__cause__
    return isinstance(cause, urllib.error.URLError) and not isinstance(
        cause, urllib.error.HTTPError
    )


def _unreachable(version: str, exc: ts.TorchServeError) -> UnreachableError:
    """The error that ends a gate which could not score `version`, naming the address asked."""
    return UnreachableError(
        f"gate: no answer to v{version}'s requests from TorchServe's inference API at "
        f"{places.address('inference')} ({exc}); set TS_INFERENCE_ADDRESS to where it listens. "
        "Nothing recorded"
    )


def passes(candidate: Score, baseline: Score | None, tolerance: float) -> bool:
    """No failed request, and not worse than the baseline by more than `tolerance` (no baseline:
    nothing is deployed, so there is nothing to be worse than)."""
    if candidate.failures:
        return False
    return baseline is None or candidate.acc + EPSILON >= baseline.acc - tolerance


def explain(candidate: Score, baseline: Score | None, tolerance: float, folder: Path) -> str:
    """Both figures, and the failed requests if any: what a refusal or an acceptance rests on."""
    text = f"accuracy {candidate.acc:.3f} on {candidate.count} photos of {folder}"
    if baseline is None:
        text += " (no current default to compare with)"
    else:
        under = candidate.acc + EPSILON < baseline.acc - tolerance
        text += (
            f" is {'under' if under else 'at least'} v{baseline.version}'s {baseline.acc:.3f}"
            f" - tolerance {tolerance:.2f}"
        )
        if baseline.failures:
            text += f" (v{baseline.version} failed {len(baseline.failures)} requests)"
    if candidate.failures:
        return text + (
            f"; {len(candidate.failures)} of {candidate.count} requests to v{candidate.version} "
            f"failed (first: {candidate.failures[0]})"
        )
    return text + ", no request failed"


def record(
    mlflow: registry.MlflowSettings,
    candidate: Score,
    baseline: Score | None,
    passed: bool,
    sha256: str,
) -> None:
    """The figures on the version's run (metrics `serving/*`, tag `serving/gate_sha256`) and on
    the registry version (tags `gate_*`), refusals included."""
    client = registry.client(mlflow)
    name, version = mlflow.registered_model, candidate.version
    run_id = client.get_model_version(name, version).run_id
    client.log_metric(run_id, "serving/acc", candidate.acc)
    client.log_metric(run_id, "serving/count", candidate.count)
    client.log_metric(run_id, "serving/failed", len(candidate.failures))
    client.set_tag(run_id, "serving/gate_sha256", sha256)  # a tag: params cannot change
    tags = {
        "gate_passed": str(passed).lower(),
        "gate_acc": f"{candidate.acc:.6f}",
        "gate_failed": str(len(candidate.failures)),
        "gate_baseline_acc": f"{baseline.acc:.6f}" if baseline else "none",
        "gate_baseline_version": baseline.version if baseline else "none",
        "gate_dir_sha256": sha256,
        "gate_at": registry.utc_now(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
