"""The TorchServe handler with a fake context: input formats, per-request errors, parity."""

from __future__ import annotations

import base64
import csv
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from catsdogs_pl import capture, preprocessing, servable
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import Settings
from catsdogs_pl.serving import package
from tests.helpers.images import image_bytes, make_class_folders, png_claiming
from tests.helpers.serving import SIZE, FakeContext, load_handler, make_export

JPEG = image_bytes(1, (80, 60))
PNG = image_bytes(2, (70, 50), fmt="PNG")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return package.stage(make_export(tmp_path / "export"), tmp_path / "model")


@pytest.fixture
def handler_and_context(model_dir: Path):
    context = FakeContext(model_dir)
    return load_handler(model_dir, context), context


def run(handler_and_context, rows: list[dict]):
    handler, context = handler_and_context
    return handler.handle(rows, context), context


@pytest.mark.parametrize(
    "row",
    [
        {"body": JPEG},
        {"body": bytearray(PNG)},
        {"data": JPEG},  # multipart field "data"
        {"file": PNG},  # multipart field "file"
        {"body": {"data": base64.b64encode(JPEG).decode()}},  # application/json
        {"body": base64.b64encode(PNG).decode()},  # text/plain base64
        {"body": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()},
    ],
)
def test_every_input_format(handler_and_context, row: dict) -> None:
    (answer,), context = run(handler_and_context, [row])
    assert context.statuses == {}
    assert answer["label"] in ("cat", "dog") and answer["model_version"] == "3"
    assert set(answer["probabilities"]) == {"cat", "dog"}
    assert sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"body": b""}, "empty"),
        ({}, "empty"),
        ({"a": b"1", "b": b"2"}, "missing_image"),
        ({"body": b"<html>hello</html>"}, "not_an_image"),
        ({"body": image_bytes(3, (400, 300))[:2500]}, "truncated"),
        ({"body": png_claiming(30_000, 30_000)}, "decompression_bomb"),
        ({"body": image_bytes(4, (1, 1))}, "too_small"),
        ({"body": {"image": "x"}}, "bad_json"),
        ({"body": {"data": 12}}, "bad_json"),
        ({"body": [1, 2]}, "bad_json"),
        ({"body": "this is not base64!"}, "bad_base64"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(handler_and_context, row: dict, reason: str) -> None:
    (answer,), context = run(handler_and_context, [row])
    assert answer["error"] == reason and answer["message"]
    code, phrase = context.statuses[0]
    assert code == 400 and phrase.startswith(reason)


def test_size_limit_from_model_config(model_dir: Path) -> None:
    context = FakeContext(model_dir, max_bytes=1000)
    handler = load_handler(model_dir, context)
    (answer,) = handler.handle([{"body": JPEG}], context)
    assert answer["error"] == "too_large" and "1000" in answer["message"]


def test_one_bad_image_does_not_spoil_the_batch(handler_and_context) -> None:
    rows = [{"body": JPEG}, {"body": b"garbage"}, {"data": PNG}, {"body": b""}]
    answers, context = run(handler_and_context, rows)
    assert len(answers) == 4
    assert set(context.statuses) == {1, 3}
    assert answers[0]["label"] in ("cat", "dog") and answers[2]["label"] in ("cat", "dog")
    assert answers[1]["error"] == "not_an_image" and answers[3]["error"] == "empty"
    names = [(name, dims[0]) for name, _, dims in context.metrics.calls if dims]
    assert ("CatsDogsRejectedInputs", ("Reason", "not_an_image")) in names
    counted = [(v, d[0]) for n, v, d in context.metrics.calls if n == "CatsDogsPredictions"]
    assert sum(v for v, _ in counted) == 2  # counted per label and batch, not per request
    assert len(counted) == len({label for _, label in counted})
    # every metric names the version that answered (the archive's, "3" here), never "default"
    assert all(("model_version", "3") in dims for _, _, dims in context.metrics.calls)
    timed = [name for name, _, dims in context.metrics.calls if dims == [("model_version", "3")]]
    assert set(timed) == {
        "CatsDogsPreprocessTime",
        "CatsDogsInferenceTime",
        "CatsDogsHandlerSeconds",
    }
    assert timed.count("CatsDogsHandlerSeconds") == 4  # one latency observation per request


def test_batched_answers_equal_single_answers(handler_and_context) -> None:
    rows = [{"body": image_bytes(i, (64, 64))} for i in range(5)]
    batched, _ = run(handler_and_context, rows)
    single = [run(handler_and_context, [row])[0][0] for row in rows]
    for a, b in zip(batched, single, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_parity_with_training_evaluation(tmp_path: Path, model_dir: Path) -> None:
    """Same bytes: the handler's input tensor equals the DataModule's evaluation batch."""
    src = make_class_folders(tmp_path / "src", per_class=12)
    dm = CatsDogsDataModule(
        source=str(src),
        data_dir=str(tmp_path / "prep"),
        settings=Settings(image_size=SIZE),
        num_workers=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    images, _ = next(iter(dm.val_dataloader()))
    train_side, _ = dm.on_after_batch_transfer((images, None), 0)
    with open(tmp_path / "prep" / "manifest.csv", newline="") as f:
        val_files = [r["relpath"] for r in csv.DictReader(f) if r["split"] == "val"]
    assert len(val_files) == len(train_side) > 0

    context = FakeContext(model_dir)
    handler = load_handler(model_dir, context)
    decoded = [handler.predictor.decode((src / rel).read_bytes())[0] for rel in val_files]
    batch = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    serve_side = preprocessing.normalize(
        batch, tuple(handler.predictor.pre.mean), tuple(handler.predictor.pre.std)
    )
    assert torch.equal(serve_side, train_side)

    net, _ = servable.load(model_dir)
    with torch.inference_mode():
        expected = net(train_side).softmax(-1)
    assert torch.allclose(handler.predictor.probabilities(decoded), expected)


def _quiet_s(handler) -> float:
    """The handler module's pause after which it flushes (imported as TorchServe imports it)."""
    return sys.modules[type(handler).__module__].QUIET_S


def _flushed_images(context: FakeContext) -> float:
    """Images in the statistics flushed so far (the `+Inf` bucket of the confidence)."""
    return sum(
        value
        for name, value, dims in context.metrics.calls
        if name == "CatsDogsStatistic_bucket"
        and ("le", "+Inf") in dims
        and ("statistic", "confidence") in dims
    )


def _wait_for_flush(context: FakeContext, images: int, seconds: float) -> float:
    """Seconds until `images` images were flushed; fails after `seconds`."""
    start = time.monotonic()
    while _flushed_images(context) < images:
        assert time.monotonic() - start < seconds, f"{_flushed_images(context)} images flushed"
        time.sleep(0.05)
    return time.monotonic() - start


def test_statistics_are_flushed_once_the_worker_pauses(handler_and_context) -> None:
    """TorchServe SIGKILLs a stopped worker without notice: what a worker counted must be out
    well before the flush interval once it gets no batch, so that a stop after a pause loses
    nothing."""
    handler, context = handler_and_context
    quiet = _quiet_s(handler)
    assert handler.flush_s >= 5 * quiet  # the shipped interval: a flush on it comes too late
    handler.handle([{"body": JPEG}, {"body": PNG}], context)
    waited = _wait_for_flush(context, 2, seconds=handler.flush_s / 2)
    assert waited >= 0.9 * quiet  # not a flush after every batch


def test_steady_traffic_still_flushes_every_interval(model_dir: Path) -> None:
    """Batches closer together than the pause still get their counts out every flush_s."""
    context = FakeContext(model_dir, statistics_flush_s=0.5)
    handler = load_handler(model_dir, context)
    quiet = _quiet_s(handler)
    sent = 0
    start = time.monotonic()
    while _flushed_images(context) == 0:
        assert time.monotonic() - start < quiet + 0.5, "no flush while batches kept coming"
        handler.handle([{"body": JPEG}], context)
        sent += 1
        time.sleep(quiet / 10)
    _wait_for_flush(context, sent, seconds=2 * quiet)


def test_every_answer_has_an_id_in_its_json_and_header(handler_and_context) -> None:
    answers, context = run(handler_and_context, [{"body": JPEG}, {"body": b"x"}, {"body": PNG}])
    ids = [answers[0]["id"], answers[2]["id"]]
    assert all(capture.valid_id(i) for i in ids) and ids[0] != ids[1]
    name = sys.modules["catsdogs_handler"].ANSWER_HEADER  # as load_handler imported it
    assert context.headers == {0: {name: ids[0]}, 2: {name: ids[1]}}
    assert "id" not in answers[1]  # a refused upload has no answer to refer to


def test_a_sample_of_answers_is_captured_with_its_bytes(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"capture_fraction": "1"}
    monkeypatch.setenv(capture.ENV, capture.settings(values, tmp_path / "captures"))
    context = FakeContext(model_dir)
    handler = load_handler(model_dir, context)
    answers = handler.handle([{"body": JPEG}, {"data": PNG}, {"body": b""}], context)
    store = handler.captures
    kept = {c.id: c for c in store.captures()}
    assert set(kept) == {answers[0]["id"], answers[1]["id"]}
    assert store.image(answers[0]["id"]) == JPEG and store.image(answers[1]["id"]) == PNG
    one = kept[answers[0]["id"]]
    assert (one.label, one.version, one.probabilities) == (
        answers[0]["label"],
        "3",
        answers[0]["probabilities"],
    )


def test_a_full_disk_never_fails_an_answer(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(capture.ENV, capture.settings({"capture_fraction": "1"}, tmp_path / "c"))
    context = FakeContext(model_dir)
    handler = load_handler(model_dir, context)

    def full(path: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    (answer,) = handler.handle([{"body": JPEG}], context)
    assert answer["label"] in ("cat", "dog") and context.statuses == {}
    assert "CatsDogsCaptureFailures" in [name for name, _, _ in context.metrics.calls]
