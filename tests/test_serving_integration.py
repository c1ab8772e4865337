"""A real TorchServe (Java 17) with the shared config: versions, rollback, auth, bad input, metrics."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs_pl import settings
from catsdogs_pl.serving import deploy, serve
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.predict import predict
from catsdogs_pl.training import tracking
from tests.conftest import image_bytes, shared_file
from tests.serving import make_export, state_folder, worker_pids
from tests.test_preprocessing import png_claiming

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """TorchServe in a fresh state folder, and a registry with two versions of catsdogs."""
    home = tmp_path_factory.mktemp("home")
    with state_folder(home):
        uri = tracking.resolve_tracking_uri()
        client = MlflowClient(uri)
        experiment = client.create_experiment("it", artifact_location=str(home / "artifacts"))
        for seed in (1, 2):
            run = client.create_run(experiment)
            export_dir = make_export(home / f"e{seed}", seed)
            client.log_artifacts(run.info.run_id, str(export_dir), "servable")
            tags = {"dataset_version": "d", "test/acc": "0.5"}
            tracking.register(client, settings.MODEL_NAME, "servable", run.info.run_id, tags, "it")
        try:
            serve.start()
            yield home
        finally:
            serve.stop()


def send(data: bytes, content_type: str = "application/octet-stream") -> ts.Response:
    headers = {"Content-Type": content_type}
    return ts.call("inference", "POST", "/predictions/catsdogs", data=data, headers=headers)


def test_versions_predict_default_and_rollback(server: Path, tmp_path: Path) -> None:
    assert "registered and default now (was none)" in deploy.deploy(version="1")
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(5, (90, 70)))
    status, answer = predict(image)
    assert status == 200 and answer["model_version"] == "1" and answer["label"] in ("cat", "dog")

    assert "default now (was v1)" in deploy.deploy(version="2")
    assert predict(image)[1]["model_version"] == "2"
    one, two = predict(image, version="1")[1], predict(image, version="2")[1]
    assert one["model_version"] == "1" and two["model_version"] == "2"
    assert one["probabilities"] != two["probabilities"]  # really two different models

    assert "rolled back from v2 to v1" in deploy.rollback()
    assert ts.default_version() == "1" and predict(image)[1]["model_version"] == "1"
    assert "v1 (default): 1 workers READY" in deploy.scale(1)
    listing = deploy.listing()
    assert "* v1" in listing and "  v2" in listing


def test_rollback_after_a_restart(server: Path, tmp_path: Path) -> None:
    deploy.deploy(version="2")
    serve.stop()  # what a container restart does: `serve run` registers only the last default
    serve.start(serve.last_deployed())
    assert [e["modelVersion"] for e in ts.describe("all")] == ["2"]
    assert "rolled back from v2 to v1" in deploy.rollback()
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(8, (90, 70)))
    assert ts.default_version() == "1" and predict(image)[1]["model_version"] == "1"


def test_bad_inputs_get_400_and_the_workers_survive(server: Path) -> None:
    if not ts.describe(""):
        deploy.deploy(version="1")
    ts.wait_ready()
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
    assert send(image_bytes(6, (64, 64))).status == 200
    assert worker_pids() == before  # no worker restarted
    assert ts.wait_ready(timeout=5)


def test_metrics_include_torchserve_and_handler_counters(server: Path) -> None:
    if not ts.describe(""):
        deploy.deploy(version="1")
    send(image_bytes(7, (64, 64)))
    send(b"garbage")
    text = ts.call("metrics", "GET", "/metrics").body.decode()
    assert "ts_inference_requests_total" in text
    assert 'CatsDogsPredictions{Label="' in text
    assert 'CatsDogsRejectedInputs{Reason="not_an_image"' in text


SAMPLE_STATUS = {
    "Cat/666.jpg": (400, "empty"),
    "Dog/11702.jpg": (400, "truncated"),
    "Cat/Thumbs.db": (400, "not_an_image"),
    "Cat/10001.jpg": (400, "not_an_image"),
    "Dog/10011.jpg": (400, "decompression_bomb"),
    "Cat/10009.jpg": (400, "too_small"),
    "Dog/10002.jpg": (200, None),  # PNG named .jpg
    "Cat/10003.jpg": (200, None),  # CMYK
    "Dog/10004.jpg": (200, None),  # greyscale
    "Cat/10005.jpg": (200, None),  # animated GIF
    "Dog/10006.jpg": (200, None),  # EXIF-rotated
    "Cat/10010.jpg": (200, None),  # junk after the end marker
}


def test_real_sample_defects(server: Path) -> None:
    sample = shared_file("petimages-fullsize-sample.zip")
    if not ts.describe(""):
        deploy.deploy(version="1")
    with zipfile.ZipFile(sample) as zf:
        for rel, (status, reason) in SAMPLE_STATUS.items():
            response = send(zf.read(f"PetImages/{rel}"))
            assert response.status == status, (rel, response.body)
            assert response.json().get("error") == reason, rel
