"""The second door (catsdogs_pl/serving/oip.py): KServe's Python server on the Open Inference
Protocol, answered through tritonclient.http (what Triton users have) and KServe's own REST
client. Health, metadata, infer (a batch of several images in one request, raw bytes and base64),
bad input, versions, metrics; the same answers as the TorchServe handler's predict path (one
Predictor), and as a real TorchServe serving the same registry version."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catsdogs_pl import places, servable
from catsdogs_pl.serving import oip, package
from catsdogs_pl.serving import torchserve as ts
from tests.helpers.images import image_bytes
from tests.helpers.ports import free_ports
from tests.helpers.serving import FakeContext, load_handler, make_export
from tests.helpers.shared_data import sample_photos

http = pytest.importorskip("tritonclient.http", reason="the oip extra: pip install -e '.[oip]'")
pytest.importorskip("kserve", reason="the oip extra: pip install -e '.[oip]'")

IMAGES = [image_bytes(seed, size) for seed, size in ((1, (80, 60)), (2, (64, 64)), (3, (120, 90)))]


# --- what Door adds to KServe's server, without a server


def _binary_request(images: list[bytes], extra: np.ndarray) -> tuple[bytes, int]:
    """A v2 request in the binary data extension as tritonclient builds it: the images as a
    BYTES input, and an FP32 input after it."""
    inputs = [
        http.InferInput("image", [len(images)], "BYTES"),
        http.InferInput("x", list(extra.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(np.array(images, dtype=object))
    inputs[1].set_data_from_numpy(extra)
    body, length = http.InferenceServerClient.generate_request_body(inputs)
    return body, length


def test_raw_image_bytes_are_set_aside_and_other_inputs_stay_binary() -> None:
    extra = np.arange(4, dtype=np.float32)
    body, length = _binary_request(IMAGES[:2], extra)
    moved, new_length, raw = oip._set_aside_bytes_inputs(body, length)
    header = json.loads(moved[:new_length])
    image, x = header["inputs"]
    assert raw == {"image": IMAGES[:2]} and image["data"] == ["", ""]
    assert "binary_data_size" not in image["parameters"]
    assert x["parameters"]["binary_data_size"] == 16  # another input's bytes stay binary
    assert np.array_equal(np.frombuffer(moved[new_length:], np.float32), extra)


def test_a_body_that_does_not_parse_passes_as_it_came() -> None:
    assert oip._set_aside_bytes_inputs(b"not json", 8) == (b"not json", 8, {})


def _through_door(path: str, method: str = "GET", version: str = "3") -> tuple[int, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen["path"] = scope["path"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(oip.Door(app, version)(scope, receive, send))
    status = sent[0]["status"]
    return status, seen.get("path") if status == 200 else json.loads(sent[1]["body"])


def test_the_version_served_answers_under_its_version_path() -> None:
    assert _through_door("/v2/models/catsdogs/versions/3/infer", "POST") == (
        200,
        "/v2/models/catsdogs/infer",
    )
    assert _through_door("/v2/models/catsdogs/versions/3") == (200, "/v2/models/catsdogs")
    assert _through_door("/v2/health/ready") == (200, "/v2/health/ready")
    assert _through_door("/v2/models/catsdogs/versions/4/infer", "POST") == (
        404,
        {"error": "catsdogs v4 is not served here: v3 is"},
    )


# --- a real KServe server


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@pytest.fixture(scope="module")
def oip_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`python -m catsdogs_pl.serving.oip --model-dir` on a staged archive folder (eager, so
    that the in-process handler below runs the same forward pass); yields (host:port, folder)."""
    tmp = tmp_path_factory.mktemp("oip")
    folder = package.stage(make_export(tmp / "export"), tmp / "model")
    (port,) = free_ports(1)
    env = {**os.environ, "TS_OIP_ADDRESS": f"http://127.0.0.1:{port}"}
    log = (tmp / "oip.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "catsdogs_pl.serving.oip",
        "--model-dir",
        str(folder),
        "--runtime",
        "eager",
    ]
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"127.0.0.1:{port}", server, tmp / "oip.log")
        yield f"127.0.0.1:{port}", folder
    finally:
        server.terminate()
        server.wait(30)


def _wait_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while _get(f"http://{url}/v2/health/ready")[0] != 200:
        assert server.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


integration = pytest.mark.integration  # a real server: not the unit tier


@integration
def test_health_and_metadata(oip_server: tuple[str, Path]) -> None:
    client = http.InferenceServerClient(oip_server[0])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(places.MODEL_NAME)
    metadata = client.get_model_metadata(places.MODEL_NAME)
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]


def _infer(url: str, images: list[bytes], binary: bool = True, version: str = "") -> Any:
    client = http.InferenceServerClient(url)
    image = http.InferInput("image", [len(images)], "BYTES")
    sent = images if binary else [base64.b64encode(i) for i in images]
    image.set_data_from_numpy(np.array(sent, dtype=object), binary_data=binary)
    outputs = [http.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    return client.infer(places.MODEL_NAME, [image], outputs=outputs, model_version=version)


def _labels(answer: Any) -> list[str]:
    """The label output as text (binary outputs come back as bytes, JSON ones as text)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in answer.as_numpy("label")]


@integration
def test_a_batch_answers_as_the_torchserve_handler_does(
    oip_server: tuple[str, Path], report: Any
) -> None:
    url, folder = oip_server
    handler = load_handler(folder, FakeContext(folder, runtime="eager"))
    expected = handler.predictor.probabilities(
        [handler.predictor.decode(i)[0] for i in IMAGES]
    ).numpy()
    for binary in (True, False):  # raw bytes in the binary extension; base64 in the JSON
        answer = _infer(url, IMAGES, binary)
        probs = answer.as_numpy("probabilities")
        labels = _labels(answer)
        assert probs.shape == (3, 2) and np.abs(probs - expected).max() <= 1e-6
        assert labels == [handler.predictor.classes[k] for k in expected.argmax(1)]
        assert answer.get_response()["model_version"] == "1"
    report(
        "oip: batch of 3 against the handler's predict path",
        {"max |dp|": float(np.abs(probs - expected).max())},
    )


@integration
def test_kserve_rest_client_answers_too(oip_server: tuple[str, Path]) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    image = InferInput("image", [1], "BYTES", data=[base64.b64encode(IMAGES[0]).decode()])
    request = InferRequest(places.MODEL_NAME, [image])
    client = InferenceRESTClient(RESTConfig(protocol="v2"))

    async def ask() -> Any:
        try:
            return await client.infer(f"http://{oip_server[0]}", request, places.MODEL_NAME)
        finally:
            await client.close()

    answer = asyncio.run(ask())
    outputs = {o.name: o for o in answer.outputs}
    assert outputs["label"].data[0] in ("cat", "dog") and len(outputs["probabilities"].data) == 2


@integration
def test_a_bad_image_is_a_400_naming_it_and_the_server_stays_up(
    oip_server: tuple[str, Path],
) -> None:
    url = oip_server[0]
    with pytest.raises(
        Exception, match=r"\[400\] image\[1\]: not_an_image: not a recognised image"
    ):
        _infer(url, [IMAGES[0], b"not a photo", IMAGES[1]])
    with pytest.raises(Exception, match=r"\[400\] image\[0\]: empty"):
        _infer(url, [b""])
    client = http.InferenceServerClient(url)
    wrong = http.InferInput("pixels", [2], "FP32")
    wrong.set_data_from_numpy(np.zeros(2, np.float32))
    with pytest.raises(Exception, match=r'\[400\] send one BYTES input named "image"'):
        client.infer(places.MODEL_NAME, [wrong])
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}
    )
    request = urllib.request.Request(
        f"http://{url}/v2/models/catsdogs/infer",
        body.encode(),
        {"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"].startswith("image[0]: bad_base64")
    assert _infer(url, IMAGES[:1]).as_numpy("label").size == 1  # still answering


@integration
def test_versions_and_metrics(oip_server: tuple[str, Path]) -> None:
    url = oip_server[0]
    assert _infer(url, IMAGES[:2], version="1").get_response()["model_version"] == "1"
    with pytest.raises(Exception, match=r"\[404\] catsdogs v2 is not served here: v1 is"):
        _infer(url, IMAGES[:1], version="2")
    with pytest.raises(Exception, match=r"\[400\]"):
        _infer(url, [b"nope"])
    status, body = _get(f"http://{url}/metrics")
    text = body.decode()
    assert status == 200
    for line in (
        'CatsDogsRejectedInputs{ModelName="catsdogs",Reason="not_an_image",model_version="1"}',
        'CatsDogsForwardPass{ModelName="catsdogs",flip_tta="true",model_version="1",precision="f32",runtime="eager"} 1.0',
    ):
        assert line in text
    assert 'CatsDogsPredictions{Label="' in text and 'CatsDogsHandlerSeconds_bucket{le="' in text
    buckets = [line for line in text.splitlines() if line.startswith("CatsDogsStatistic_bucket{")]
    assert any('statistic="confidence"' in line and 'le="+Inf"' in line for line in buckets)


# --- the same registry version behind both servers


@pytest.mark.integration
def test_torchserve_and_kserve_answer_the_same_on_the_shared_photos(
    served: Path, tmp_path: Path, report: Any
) -> None:
    photos = list(sample_photos().values())[:24]
    torchserve = []
    for data in photos:
        response = ts.call(
            "inference",
            "POST",
            "/predictions/catsdogs",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert response.status == 200, response.body[:300]
        torchserve.append(response.json())
    time.sleep(1.5)  # the workers emit the forward pass they run once quiet (handler QUIET_S)
    scraped = ts.call("metrics", "GET", "/metrics").body.decode()
    runtime = next(
        line.split('runtime="')[1].split('"')[0]
        for line in scraped.splitlines()
        if line.startswith("CatsDogsForwardPass{") and 'model_version="1"' in line
    )
    (port,) = free_ports(1)
    env = {**os.environ, "TS_OIP_ADDRESS": f"http://127.0.0.1:{port}"}
    log = tmp_path / "oip.log"
    cmd = [
        sys.executable,
        "-m",
        "catsdogs_pl.serving.oip",
        "--model-version",
        "1",
        "--runtime",
        runtime,
    ]
    with log.open("w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"127.0.0.1:{port}", server, log)
        assert "signature verified with" in log.read_text()
        answer = _infer(f"127.0.0.1:{port}", photos)
    finally:
        server.terminate()
        server.wait(30)
    labels = _labels(answer)
    probs = answer.as_numpy("probabilities")
    classes = list(torchserve[0]["probabilities"])
    theirs = np.array([[a["probabilities"][c] for c in classes] for a in torchserve])
    difference = float(np.abs(probs - theirs).max())
    report(
        "oip vs TorchServe, v1 on 24 shared photos", {"runtime": runtime, "max |dp|": difference}
    )
    assert labels == [a["label"] for a in torchserve]
    assert difference <= 1e-6  # TorchServe's answers are rounded to 6 decimals: 5e-7 of it
    assert difference < servable.PARITY
