"""A real TorchServe (Java 17) with the shared config: versions, rollback, auth, bad input, metrics.

The session's TorchServe (tests/conftest.py), its registry holding versions 1 and 2."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from catsdogs_pl.serving import deploy, serve
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.predict import predict
from tests.helpers.images import image_bytes, png_claiming
from tests.helpers.serving import worker_pids
from tests.helpers.shared_data import SAMPLE_DEFECTS, SAMPLE_PREFIX, shared_file

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
]


def send(data: bytes, content_type: str = "application/octet-stream") -> ts.Response:
    headers = {"Content-Type": content_type}
    return ts.call("inference", "POST", "/predictions/catsdogs", data=data, headers=headers)


def test_versions_predict_default_and_rollback(blank_torchserve: Path, tmp_path: Path) -> None:
    assert "registered and default now (was none)" in deploy.deploy_version(version="1")
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(5, (90, 70)))
    status, answer = predict(image)
    assert status == 200 and answer["model_version"] == "1" and answer["label"] in ("cat", "dog")

    assert "default now (was v1)" in deploy.deploy_version(version="2")
    assert predict(image)[1]["model_version"] == "2"
    one, two = predict(image, version="1")[1], predict(image, version="2")[1]
    assert one["model_version"] == "1" and two["model_version"] == "2"
    assert one["probabilities"] != two["probabilities"]  # really two different models

    assert "rolled back from v2 to v1" in deploy.rollback()
    assert ts.default_version() == "1" and predict(image)[1]["model_version"] == "1"
    assert "v1 (default): 1 workers READY" in deploy.scale(1)
    listing = deploy.listing()
    assert "* v1" in listing and "  v2" in listing


def test_handler_metrics_name_the_version_that_answered(blank_torchserve: Path) -> None:
    deploy.deploy_version(version="1")
    deploy.deploy_version(version="2")  # the default: /predictions/catsdogs is answered by v2
    assert send(image_bytes(11, (64, 64))).status == 200
    path = "/predictions/catsdogs/1"
    octet = {"Content-Type": "application/octet-stream"}
    answer = ts.call("inference", "POST", path, image_bytes(12, (64, 64)), octet)
    assert answer.status == 200 and answer.json()["model_version"] == "1"
    text = ts.call("metrics", "GET", "/metrics").body.decode()
    ours = [line for line in text.splitlines() if line.startswith("CatsDogs")]
    for version in ("1", "2"):
        for metric in ("CatsDogsPredictions{", "CatsDogsHandlerSeconds_count{"):
            assert any(
                line.startswith(metric) and f'model_version="{version}"' in line for line in ours
            ), (metric, version, ours)
    assert not any('model_version="default"' in line for line in ours), ours


def test_the_logs_hold_each_event_once(served: Path) -> None:
    """configs/torchserve/log4j2.xml: no line twice, no per-request DEBUG, no echo of the workers'
    metric lines (TorchServe's own config writes all three under load)."""
    logs = served / "logs"

    def posts() -> int:
        return (logs / "access_log.log").read_text().count('"POST /predictions/catsdogs')

    before, start = posts(), len((logs / "ts_log.log").read_text().splitlines())  # earlier tests'
    for seed in (21, 22, 23):
        assert send(image_bytes(seed, (64, 64))).status == 200
    deadline = time.monotonic() + 10  # async logging: the lines reach the files shortly after
    while time.monotonic() < deadline and posts() < before + 3:
        time.sleep(0.2)
    assert posts() == before + 3
    lines = (logs / "ts_log.log").read_text().splitlines()[start:]
    assert not [line for line in lines if "[METRICS]" in line or "[DEBUG]" in line]
    assert not [a for a, b in zip(lines, lines[1:], strict=False) if a == b], "twice"
    assert not [line for line in lines if "ACCESS_LOG" in line]  # in access_log.log alone


def test_rollback_after_a_restart(blank_torchserve: Path, tmp_path: Path) -> None:
    deploy.deploy_version(version="1")
    deploy.deploy_version(version="2")
    serve.stop()  # what a container restart does: `serve run` registers only the last default
    serve.start(serve.last_deployed())
    assert [e["modelVersion"] for e in ts.describe("all")] == ["2"]
    assert "rolled back from v2 to v1" in deploy.rollback()
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(8, (90, 70)))
    assert ts.default_version() == "1" and predict(image)[1]["model_version"] == "1"


def test_bad_inputs_get_400_and_the_workers_survive(served: Path) -> None:
    before = worker_pids()
    cases = {
        b"": "empty",
        b"<html>no</html>": "not_an_image",
        image_bytes(3, (400, 300))[:2500]: "truncated",
        png_claiming(30_000, 30_000): "decompression_bomb",
    }
    for body, reason in cases.items():
        response = send(body)
        assert response.status == 400, (reason, response.body)
        assert response.json()["error"] == reason
    bad_json = send(json.dumps({"nope": 1}).encode(), "application/json")
    assert bad_json.status == 400 and bad_json.json()["error"] == "bad_json"
    form = send(b"a=1&b=2", "application/x-www-form-urlencoded")
    assert form.status == 400 and form.json()["error"] == "missing_image"
    good = send(image_bytes(6, (64, 64)))
    assert good.status == 200
    assert good.headers["x-catsdogs-answer-id"] == good.json()["id"]  # what feedback names
    assert worker_pids() == before  # no worker restarted
    entry = ts.wait_ready(timeout=5)
    assert entry["modelVersion"] == "1" and ts.ready_workers(entry) == len(before)


COUNTED = {  # series prefix -> how much one good and one bad request add to it
    "ts_inference_requests_total{": 2,
    'CatsDogsPredictions{Label="': 1,
    'CatsDogsRejectedInputs{Reason="not_an_image"': 1,
}


def _counted() -> dict[str, float]:
    """The sum of each COUNTED series on the metrics port (0 while it has no sample)."""
    text = ts.call("metrics", "GET", "/metrics").body.decode()
    return {
        prefix: sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )
        for prefix in COUNTED
    }


def test_metrics_include_torchserve_and_handler_counters(served: Path) -> None:
    # the server is the session's: other tests' requests are counted too, so count the increase
    before = _counted()
    send(image_bytes(7, (64, 64)))
    send(b"garbage")
    deadline = time.monotonic() + 30  # handler metrics reach the frontend through worker logs
    while True:
        added = {k: v - before[k] for k, v in _counted().items()}
        if all(added[k] >= n for k, n in COUNTED.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert added == COUNTED


def test_real_sample_defects(served: Path) -> None:
    """Every file of the sample's defect table: the server's answer to its bytes."""
    sample = shared_file("petimages-fullsize-sample.zip")
    with zipfile.ZipFile(sample) as zf:
        for rel, defect in SAMPLE_DEFECTS.items():
            response = send(zf.read(SAMPLE_PREFIX + rel))
            answer = response.json()
            if defect.served is None:
                assert response.status == 200, (rel, response.body)
                assert answer["label"] in ("cat", "dog"), rel
            else:
                assert response.status == 400, (rel, response.body)
                assert answer["error"] == defect.served, rel


def test_the_forward_pass_is_a_label_on_the_metrics(served: Path) -> None:
    """What computes the answers (runtime, precision, flip TTA) reaches Prometheus as
    CatsDogsForwardPass: TorchServe accepts the gauge as metrics.yaml declares it."""
    send(image_bytes(9, (64, 64)))
    deadline = time.monotonic() + 30  # emitted with the statistics, once the worker is quiet
    while time.monotonic() < deadline:
        text = ts.call("metrics", "GET", "/metrics").body.decode()
        lines = [line for line in text.splitlines() if line.startswith("CatsDogsForwardPass{")]
        if lines:
            break
        time.sleep(0.5)
    assert lines, "no CatsDogsForwardPass series on the metrics port"
    assert 'precision="f32"' in lines[0] and 'model_version="1"' in lines[0]  # no gate: float32
    assert 'runtime="' in lines[0] and 'flip_tta="' in lines[0]
