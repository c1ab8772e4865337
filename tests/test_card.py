"""The model card: built from a run's figures (small fakes here, no training), it parses with
huggingface_hub and says back exactly what it was given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from huggingface_hub import ModelCard

from catsdogs_pl import servable
from catsdogs_pl.contracts import Architecture, Calibration, ForwardPass, Summary
from catsdogs_pl.data.cleaning import Record
from catsdogs_pl.training import card

DATA = Summary(
    dataset_version="0123456789abcdef",
    source="/data/PetImages.zip",
    classes=("cat", "dog"),
    files=1010,
    kept=1000,
    rejected=10,
    by_label={"cat": {"kept": 500, "rejected": 4}, "dog": {"kept": 500, "rejected": 6}},
    by_reason={"corrupt": 10},
    splits={
        "train": {"cat": 400, "dog": 400, "total": 800},
        "val": {"cat": 50, "dog": 50, "total": 100},
        "test": {"cat": 60, "dog": 40, "total": 100},
    },
    settings={"image_size": 176, "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0},
    source_fingerprint="f" * 64,
)
FIGURES = card.Figures(
    test={
        "test/acc": 0.95,
        "test/acc_cat": 0.95,
        "test/acc_dog": 0.95,
        "test/auroc": 0.987,
        "test/ece": 0.052,
        card.TEST_ECE_SERVED: 0.011,
        "test/loss": 0.3,  # the test loop logs more than the card reports
    },
    val_accuracy=0.96,
    eager_accuracy=0.95,
    feedback={},
)
FITTED = Calibration(
    temperature=0.5, split="val", images=100, ece_before=0.06, ece_after=0.01, bins=15
)
RUNGS = [
    {"precision": "bf16", "skipped": "this CPU has no bf16 units"},
    {
        "precision": "int8",
        "test": {"accuracy": 0.93, "eager_accuracy": 0.95, "photos": 100},
        "shifts": {"accuracy": 0.90, "eager_accuracy": 0.91, "photos": 2200},
        "agreement": 0.97,
        "accepted": False,
    },
    {
        "precision": "f32",
        "test": {"accuracy": 0.94, "eager_accuracy": 0.95, "photos": 100},
        "shifts": {
            "accuracy": 0.91,
            "eager_accuracy": 0.91,
            "photos": 2200,
            "by_shift": {"greyscale": {"accuracy": 0.85, "eager_accuracy": 0.86, "photos": 200}},
        },
        "agreement": 0.998,
        "accepted": True,
    },
]
FORWARD = ForwardPass("auto", "f32", servable.ONNX, False, RUNGS, {"flip_tta": False}, ["int8"])
ARCH = Architecture("EfficientNetLite", {"variant": "lite2", "frozen_blocks": 7})


def build(tmp_path: Path, **changed: object) -> str:
    parts = {"data": DATA, "figures": FIGURES, "calibrated": FITTED, "forward": FORWARD}
    parts["cost"] = (361.4, "batch 8, 1 thread(s), openvino bf16")
    path = card.write(tmp_path, "run123", ARCH, **{**parts, **changed})
    assert path == tmp_path / servable.CARD
    return path.read_text()


def results(text: str) -> dict[tuple[str, str], float]:
    return {
        (r.dataset_split, r.metric_name): r.metric_value for r in ModelCard(text).data.eval_results
    }


def test_the_card_parses_and_gives_back_every_figure(tmp_path: Path) -> None:
    parsed = ModelCard(build(tmp_path))
    assert parsed.data.library_name == "pytorch"
    assert parsed.data.pipeline_tag == "image-classification"
    assert set(parsed.data.tags) == {"image-classification", "cats-vs-dogs"}
    assert parsed.data.license == "mit"
    assert {
        (r.task_type, r.dataset_type, r.dataset_revision) for r in parsed.data.eval_results
    } == {("image-classification", "petimages", DATA.dataset_version)}
    assert results(parsed.content) == {
        ("test", "test/acc"): 0.95,
        ("test", "test/acc_cat"): 0.95,
        ("test", "test/acc_dog"): 0.95,
        ("test", "test/acc_served"): 0.94,  # the accepted rung's, not eager's
        ("test", "test/auroc"): 0.987,
        ("test", "test/ece"): 0.052,
        ("test", "test/ece_served"): 0.011,
        ("validation", "val/acc"): 0.96,
    }


def test_eager_served_reports_eager_accuracy(tmp_path: Path) -> None:
    eager = dataclasses.replace(FORWARD, runtime="eager", model="", rungs=RUNGS[:1])
    text = build(tmp_path, forward=eager)
    assert results(text)[("test", "test/acc_served")] == FIGURES.eager_accuracy
    assert "no shifted photos" in text


def test_wilson_interval_of_a_known_case() -> None:
    low, high = card.wilson(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)
    assert card.wilson(100, 100)[1] == 1.0 and card.wilson(0, 100)[0] == 0.0


def test_the_body_holds_intervals_counts_and_limits(tmp_path: Path) -> None:
    text = build(tmp_path)
    assert "| `test/acc` | test split (the test loop) | 0.9500 | [0.8882, 0.9785] | 100 |" in text
    # per class, on that class's photos only: 57 of 60 cats
    low, high = card.wilson(57, 60)
    assert f"| 0.9500 | [{low:.4f}, {high:.4f}] | 60 |" in text
    assert "| test | 60 | 40 | 100 |" in text
    assert "Users' labels trained on: 0," in text
    assert "## Intended use and limits" in text and "other animals" in text
    assert "not photos" in text
    assert "0.5000" in text and "run123" in text and "lite2" in text
    assert "| `greyscale` | 0.8600 | 0.8500 | 200 |" in text  # the served rung's, per shift
    assert "Cost: 361.4 images/s of the forward pass alone (one pass per image)" in text
    assert "(batch 8, 1 thread(s), openvino bf16)" in text


def test_a_changed_figure_changes_the_card(tmp_path: Path) -> None:
    text = build(tmp_path)
    better = dataclasses.replace(FIGURES, test={**FIGURES.test, "test/acc": 0.97})
    changed = build(tmp_path, figures=better)
    assert results(changed)[("test", "test/acc")] == 0.97 != results(text)[("test", "test/acc")]
    hotter = build(tmp_path, calibrated=dataclasses.replace(FITTED, temperature=0.75))
    assert "temperature 0.7500" in hotter and "temperature 0.5000" not in hotter


def test_feedback_labels_count_the_kept_added_photos() -> None:
    manifest = [
        Record("cat/1.jpg", "cat"),
        Record("+1/cat/a.jpg", "cat"),
        Record("+1/dog/b.jpg", "dog"),
        Record("+2/dog/c.jpg", "dog"),
        Record("+2/dog/d.jpg", "dog", status="rejected", reason="feedback_conflict"),
    ]
    found = card.feedback_labels(manifest)
    assert found == {"cat": 1, "dog": 2}
    assert card.feedback_labels(manifest[:1]) == {}


def test_the_card_says_how_many_users_labels(tmp_path: Path) -> None:
    text = build(tmp_path, figures=dataclasses.replace(FIGURES, feedback={"cat": 1, "dog": 2}))
    assert "Users' labels trained on: 3 (cat 1, dog 2)" in text
