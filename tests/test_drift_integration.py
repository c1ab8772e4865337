"""Drift monitoring end to end on a real TorchServe: a version whose archive carries a reference
built from validation drawings; in-distribution drawings stay under the PSI threshold, greyscale and
darkened ones push the statistic they change above it; the monitor command reports and exports it.
The statistics of a worker that paused survive its scale-down."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance

from catsdogs_pl import places, servable
from catsdogs_pl.data import synthetic
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import Settings, read_manifest
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.monitoring import drift, monitor, reference, stats
from catsdogs_pl.predictor import Predictor
from catsdogs_pl.serving import deploy, package, sign
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.images import image_bytes
from tests.helpers.serving import ARCH, SIZE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
]
VERSION = "90"  # far from the registry's versions, which other tests package
PAUSE_S = 2.0  # the handler's QUIET_S (1 s) and a margin
OCTET = {"Content-Type": "application/octet-stream"}


def _version_with_reference(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """An archive whose reference is the validation drawings; returns it and the test drawings."""
    src = synthetic.generate(tmp_path / "drawings", per_class=300, size=96)
    dm = CatsDogsDataModule(
        source=str(src),
        data_dir=str(tmp_path / "prep"),
        settings=Settings(image_size=SIZE, val_fraction=0.5, test_fraction=0.45),
        num_workers=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    net = BaselineCNN(**ARCH).eval()
    images = np.load(dm.datasets["val"].images_path)
    probs = Predictor(net, dm.preprocessing).probabilities(images).numpy()  # as served
    ref = reference.build(
        images, dm.original_sizes("val"), probs, dm.datasets["val"].labels, dm.classes
    )
    folder = sign.sign_export(servable.export(net, dm.preprocessing, tmp_path / "export", ref))
    mar = package.build_mar(folder, VERSION, places.model_store())
    manifest = read_manifest(tmp_path / "prep" / "manifest.csv")
    tests = [(src / r.relpath).read_bytes() for r in manifest if r.split == "test"]
    return mar, tests


def _shifted(photos: list[bytes], change) -> list[bytes]:
    out = []
    for data in photos:
        buf = io.BytesIO()
        change(Image.open(io.BytesIO(data)).convert("RGB")).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _send(version: str, photos: list[bytes]) -> None:
    for data in photos:
        answer = ts.call("inference", "POST", f"/predictions/catsdogs/{version}", data, OCTET)
        assert answer.status == 200, answer.text


def _served_window(photos: list[bytes]) -> monitor.Window:
    """Send `photos` to the version and wait until the workers flushed their statistics."""
    before = monitor.scrape()
    _send(VERSION, photos)
    deadline = time.monotonic() + 60
    while True:
        window = monitor.scrape().minus(before)
        if window.counts(VERSION)["confidence"].sum() >= len(photos):
            return window
        assert time.monotonic() < deadline, "the workers did not flush their statistics"
        time.sleep(1)


def test_drift_in_and_out_of_distribution(blank_torchserve: Path, tmp_path: Path, report) -> None:
    mar, photos = _version_with_reference(tmp_path)
    deploy._register(VERSION, mar)
    try:
        conditions = {
            "in-distribution": photos,
            "greyscale": _shifted(photos, lambda im: im.convert("L").convert("RGB")),
            "darkened": _shifted(photos, lambda im: ImageEnhance.Brightness(im).enhance(0.4)),
        }
        figures = {}
        for name, sent in conditions.items():
            (found,) = monitor.compare(_served_window(sent))
            assert found.version == VERSION and found.images == len(sent) and found.judged
            figures[name] = {k: round(v, 3) for k, v in found.psi.items()}
            if name == "in-distribution":
                assert max(found.psi.values()) < drift.PSI_DRIFT, found.psi
                assert not found.drifted
            else:
                changed = "colourfulness" if name == "greyscale" else "brightness"
                assert changed in found.drifted, found.psi
                assert f"INPUT DRIFT in {', '.join(found.drifted)}" in drift.report([found], "t")
            for unchanged in ("aspect_ratio", "megapixels"):  # the uploads kept their size
                assert found.psi[unchanged] < drift.PSI_MODERATE
            if name == "darkened":
                report("drift report, darkened", drift.report([found], "darkened drawings"))
        report("drift_psi", {"images": len(photos), **figures})

        # the command, natively: a report since start, and gauges for Prometheus with --serve
        done = subprocess.run(
            [sys.executable, "-m", "catsdogs_pl.monitor"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert f"== v{VERSION}: {3 * len(photos)} images" in done.stdout
        assert "INPUT DRIFT" in done.stdout
        server = subprocess.Popen(
            [sys.executable, "-m", "catsdogs_pl.monitor", "--serve", "--interval", "1"],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = places.address("monitor") + "/metrics"
            deadline = time.monotonic() + 60
            while True:
                try:
                    text = urllib.request.urlopen(url, timeout=5).read().decode()
                    if f'model_version="{VERSION}"' in text:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "no gauges from monitor --serve"
                time.sleep(1)
        finally:
            server.terminate()
            server.wait(30)
        gauge = f'catsdogs_drift_psi{{statistic="colourfulness",model_version="{VERSION}"}}'
        assert gauge in text and "catsdogs_estimated_accuracy{" in text
        assert set(stats.IMAGE) <= {s for s in stats.EDGES if f'statistic="{s}"' in text}
    finally:
        deploy._unregister(VERSION)


def _scale(version: str, workers: int) -> None:
    query = f"min_worker={workers}&max_worker={workers}&synchronous=true"
    path = f"/models/{places.MODEL_NAME}/{version}?{query}"
    ts.check(ts.call("management", "PUT", path, timeout=120), f"scale v{version} to {workers}")


def test_a_paused_worker_loses_no_statistics_when_scaled_down(served: Path) -> None:
    """TorchServe stops a worker by closing its socket and SIGKILLing it milliseconds later: the
    statistics of what it answered are in the metrics once it paused, well inside
    statistics_flush_s, so a scale-down (or an unregister) after that pause loses none."""
    config = yaml.safe_load(places.MODEL_CONFIG.read_text())
    assert config["handler"]["statistics_flush_s"] >= 2 * PAUSE_S
    photos = [image_bytes(i, (64, 48)) for i in range(12)]
    before = monitor.scrape()
    _send("1", photos)
    time.sleep(PAUSE_S)
    _scale("1", 0)
    try:
        window = monitor.scrape().minus(before)
        assert window.counts("1")["confidence"].sum() == len(photos)
        assert window.counts("1")["brightness"].sum() == len(photos)
    finally:
        _scale("1", config["minWorkers"])
        ts.wait_ready("1")
