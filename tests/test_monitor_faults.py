"""The monitor's references when the model store fails it: an archive that is unreadable for a while
(being rewritten, half written, gone between listing and reading) skips its version for one round
and never ends the loop; without an archive the reference comes from the registry."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from catsdogs_pl import places, registry
from catsdogs_pl.contracts import Reference
from catsdogs_pl.monitoring import drift, monitor, reference, stats

VERSION = "3"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state folder of the test's own: an empty model store and registry."""
    monkeypatch.setenv("CATSDOGS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _reference(n: int = 300) -> Reference:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    probs = np.stack([p := rng.uniform(0.5, 1, n), 1 - p], 1)
    return reference.build(images, np.full((n, 2), 400), probs, np.zeros(n, int), ["cat", "dog"])


def _archive(ref: Reference) -> bytes:
    """What the monitor reads of a `.mar`: a zip with reference.json (and the weights, so that
    half of it is no zip)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as mar:
        mar.writestr("weights.pt", np.random.default_rng(1).bytes(20_000))
        mar.writestr(Reference.FILE, ref.to_json())
    return buf.getvalue()


def _window(version: str, ref: Reference) -> monitor.Window:
    """A scrape in which `version` served images distributed as in `ref`."""
    window = monitor.Window()
    for name, counts in ref.counts.items():
        for le, total in zip(stats.le_labels(name), np.cumsum(counts), strict=True):
            window.buckets[(version, name, le)] = float(total)
    window.predicted.update({(version, k): float(n) for k, n in ref.predicted.items()})
    return window


@pytest.mark.parametrize("fault", ["not a zip", "half written", "gone"])
def test_an_unreadable_archive_skips_its_version_for_one_round(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _reference()
    monkeypatch.setattr(monitor, "scrape", lambda: _window(VERSION, ref))
    mar = places.model_store() / places.mar_name(VERSION, "0a1b2c3d4e5f")
    mar.parent.mkdir(parents=True)
    if fault == "gone":  # listed, then removed before it was opened
        monkeypatch.setattr(places, "find_mar", lambda version: mar)
    else:
        mar.write_bytes(b"PK\x03\x04 not yet" if fault == "not a zip" else _archive(ref)[:15_000])
    rounds = monitor.Monitor(None, 0)

    (skipped,) = rounds.compare_window()
    assert skipped.version == VERSION and skipped.images == ref.images and not skipped.psi
    assert skipped.note.startswith(f"skipped this round: the archive of v{VERSION}")
    error = "FileNotFoundError" if fault == "gone" else "BadZipFile"
    assert f"is unreadable ({error}" in skipped.note
    text = drift.report([skipped], "test")
    assert f"not compared: skipped this round: the archive of v{VERSION}" in text
    assert f'catsdogs_monitored_images{{model_version="{VERSION}"}}' in rounds.latest

    mar.write_bytes(_archive(ref))  # `package --force` done: compared the next round
    (compared,) = rounds.compare_window()
    assert compared.note == "" and compared.judged and not compared.drifted
    assert (
        compared.psi == drift.compare(VERSION, ref, _window(VERSION, ref).counts(VERSION), {}).psi
    )


def _register(client: MlflowClient, experiment: str, files: dict[str, str]) -> str:
    """A registered version of catsdogs whose run logged `files` under servable/."""
    run_id = client.create_run(experiment).info.run_id
    for name, text in files.items():
        client.log_text(run_id, text, f"servable/{name}")
    tags = {"dataset_version": "d", "test/acc": "0.5"}
    registered = registry.register(client, places.MODEL_NAME, "servable", run_id, tags, "t")
    return str(registered.version)


def test_without_an_archive_the_reference_comes_from_the_registry(home: Path) -> None:
    """A monitor without the model store (Kubernetes): the registry of the fit config (here the
    state folder's, as package and deploy find it) has the reference of every version."""
    ref = _reference()
    client = MlflowClient(registry.resolve_tracking_uri())
    experiment = client.create_experiment("monitor", artifact_location=str(home / "artifacts"))
    with_reference = _register(client, experiment, {Reference.FILE: ref.to_json()})
    without = _register(client, experiment, {"architecture.json": "{}"})
    window = _window(with_reference, ref)
    for other in (without, "5"):  # "5": not registered
        window.buckets.update(_window(other, ref).buckets)
    assert not places.model_store().exists()

    found = {c.version: c for c in monitor.compare(window)}
    counts = window.counts(with_reference)
    assert found[with_reference].note == "" and found[with_reference].judged
    assert found[with_reference].psi == drift.compare(with_reference, ref, counts, {}).psi
    assert found[without].note == "it has no reference.json (fit it again)"
    assert found["5"].note.startswith("skipped this round: no archive of v5 in")
    assert "has no version 5" in found["5"].note
