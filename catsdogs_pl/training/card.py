"""The model card of a version: what it was trained on, how well it does and where it must not be
trusted, written at publish from the run's own figures, so it cannot say what the run did not.

`write` puts `model_card.md` (servable.CARD) into the servable export before it is signed: the
card travels with the weights into the run's `servable/` artifacts and the `.mar`. Markdown with
Hugging Face card metadata: the YAML front matter's model-index holds the test and validation
figures (`huggingface_hub.ModelCard(text).data.eval_results` reads them back); the body adds what
model-index has no field for: intervals, calibration, the forward gate, the data and its users'
labels, and the limits of use.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from catsdogs_pl import registry, servable
from catsdogs_pl.contracts import Architecture, Calibration, ForwardPass, Summary
from catsdogs_pl.data.cleaning import ADDED, Record
from catsdogs_pl.models.classifier import TEST_ACC, TEST_ECE, VAL_ACC, class_accuracy
from catsdogs_pl.training import forward_gate, robustness

TEST_AUROC = "test/auroc"  # the classifier's test MetricCollection: prefix "test/" + "auroc"
TEST_ECE_SERVED = TEST_ECE + "_served"  # the same, of the probabilities served (calibrated)
TEST_ACC_SERVED = TEST_ACC + "_served"  # the test accuracy of the forward pass served
LICENSE = "mit"  # pyproject.toml's
DATASET = {"dataset_name": "PetImages (Kaggle cats and dogs)", "dataset_type": "petimages"}
TASK = "image-classification"
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Figures:
    """What the run measured that no file of the export holds, gathered by publish."""

    test: dict[str, float]  # TEST_ACC, class_accuracy(c), TEST_AUROC, TEST_ECE, TEST_ECE_SERVED
    val_accuracy: float  # the best checkpoint's: what it was chosen by
    eager_accuracy: float  # eager float32's on the test split as served (flip TTA as chosen)
    feedback: dict[str, int]  # users' labels among the training photos, per class


def feedback_labels(manifest: Iterable[Record]) -> dict[str, int]:
    """The kept photos that came from feedback exports (`prepare --add`), per label: all of them
    train, since prepare keeps validation and test the source's."""
    added = Counter(r.label for r in manifest if r.status == "kept" and r.relpath.startswith(ADDED))
    return dict(sorted(added.items()))


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike p +- z*se it stays within [0, 1] and
    keeps its coverage on a demo's small test split and at accuracies near 1."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def served_rung(forward: ForwardPass) -> dict[str, Any] | None:
    """The rung the gate accepted, or None where eager PyTorch is served."""
    return next((rung for rung in forward.rungs if rung.get("accepted")), None)


def accuracies(
    data: Summary, figures: Figures, forward: ForwardPass
) -> list[tuple[str, str, float, int]]:
    """(key, on what, accuracy, photos) of every accuracy the card reports."""
    test, val = data.splits["test"], data.splits["val"]
    rung = served_rung(forward)
    served = rung["test"]["accuracy"] if rung else figures.eager_accuracy
    return [
        (TEST_ACC, "test split (the test loop)", figures.test[TEST_ACC], test["total"]),
        *(
            (class_accuracy(c), f"test photos of {c}s", figures.test[class_accuracy(c)], test[c])
            for c in data.classes
        ),
        (TEST_ACC_SERVED, f"test split as served: {forward.describe()}", served, test["total"]),
        (VAL_ACC, "validation split (the best checkpoint)", figures.val_accuracy, val["total"]),
    ]


def metadata(run_id: str, data: Summary, figures: Figures, forward: ForwardPass, net: str) -> str:
    """The YAML front matter: Hugging Face's model-index of the run's figures."""

    def result(split: str, kind: str, name: str, value: float) -> EvalResult:
        return EvalResult(
            task_type=TASK,
            **DATASET,
            dataset_split=split,
            dataset_revision=data.dataset_version,
            metric_type=kind,
            metric_name=name,
            metric_value=value,
        )

    results = [
        result("validation" if key == VAL_ACC else "test", "accuracy", key, value)
        for key, _, value, _ in accuracies(data, figures, forward)
    ]
    results += [
        result("test", kind, key, figures.test[key])
        for kind, key in (("roc_auc", TEST_AUROC), ("ece", TEST_ECE), ("ece", TEST_ECE_SERVED))
    ]
    card = ModelCardData(
        model_name=f"catsdogs {net} (run {run_id})",
        library_name="pytorch",
        license=LICENSE,
        pipeline_tag=TASK,
        tags=[TASK, "cats-vs-dogs"],
        eval_results=results,
    )
    return card.to_yaml()


def table(header: tuple[str, ...], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A Markdown table's lines."""
    lines = [header, ["---"] * len(header), *rows]
    return [f"| {' | '.join(map(str, line))} |" for line in lines]


def data_section(data: Summary) -> list[str]:
    settings = data.settings
    rejected = ", ".join(f"{reason} {n}" for reason, n in data.by_reason.items()) or "none"
    counts = (
        [split, *(n[c] for c in data.classes), n["total"]] for split, n in data.splits.items()
    )
    return [
        "## Data",
        "",
        f"Dataset version `{data.dataset_version}` (a digest of the kept photos, their labels and "
        f"splits), prepared from `{data.source}`: {data.files} files, {data.kept} kept, "
        f"{data.rejected} rejected ({rejected}).",
        "",
        *table(("split", *data.classes, "total"), counts),
        "",
        f"Split: a keyed hash of each photo's bytes (seed {settings['split_seed']}) puts "
        f"{settings['test_fraction']} of the source's photos in test and "
        f"{settings['val_fraction']} in validation, the rest in train. Users' labels join the "
        "training split only: validation and test are photos no user labelled.",
    ]


def evaluation_section(data: Summary, figures: Figures, forward: ForwardPass) -> list[str]:
    rows = []
    for key, what, accuracy, n in accuracies(data, figures, forward):
        low, high = wilson(round(accuracy * n), n)
        rows.append([f"`{key}`", what, f"{accuracy:.4f}", f"[{low:.4f}, {high:.4f}]", n])
    auroc = figures.test[TEST_AUROC]
    rows.append([f"`{TEST_AUROC}`", "test split (the test loop)", f"{auroc:.4f}", "", rows[0][4]])
    return [
        "## Evaluation",
        "",
        *table(("metric", "on", "value", "95% interval", "photos"), rows),
        "",
        "Intervals: Wilson score, 95%, of the photos counted (correct = accuracy x photos). "
        "model-index has no field for an interval, so they are in this table only; AUROC has none.",
    ]


def calibration_section(fitted: Calibration, figures: Figures) -> list[str]:
    return [
        "## Calibration",
        "",
        f"The served logits are divided by the temperature {fitted.temperature:.4f}, fitted on the "
        f"{fitted.split} split ({fitted.images} photos); it changes no label. Expected "
        f"calibration error ({fitted.bins} equal bins) on {fitted.split}: "
        f"{fitted.ece_before:.4f} before, {fitted.ece_after:.4f} after. On test: "
        f"`{TEST_ECE}` (the network) {figures.test[TEST_ECE]:.4f}, `{TEST_ECE_SERVED}` "
        f"{figures.test[TEST_ECE_SERVED]:.4f}.",
    ]


def robustness_section(run_id: str, forward: ForwardPass) -> list[str]:
    shifts = ", ".join(list(robustness.SHIFTS)[1:])  # [0] is the upload untouched
    tried = [rung for rung in forward.rungs if "shifts" in rung]
    if tried:
        rung = served_rung(forward) or tried[0]
        found = rung["shifts"]
        said = (
            f"The forward gate's shift set ({shifts}, each on up to {forward_gate.SHIFT_PHOTOS} "
            f"test photos decoded from their original bytes: {found['photos']} images): accuracy "
            f"{found['eager_accuracy']:.4f} in eager float32, {found['accuracy']:.4f} in "
            f"{rung['precision']}{' (served)' if rung['accepted'] else ''}."
        )
    else:
        said = (
            "The forward gate scored no shifted photos (no rung was tried, or the source is gone)."
        )
    rung = served_rung(forward) or next(iter(tried), {})
    rows = [
        [f"`{kind}`", f"{f['eager_accuracy']:.4f}", f"{f['accuracy']:.4f}", f["photos"]]
        for kind, f in rung.get("shifts", {}).get("by_shift", {}).items()
    ]
    shown = table(("shift", "eager float32", rung.get("precision", ""), "photos"), rows)
    return [
        "## Robustness",
        "",
        said,
        *(["", *shown] if rows else []),
        "",
        "The accuracy under each shift on the whole test split: `python -m "
        f"catsdogs_pl.training.robustness --run-id {run_id}` (then in this run as "
        "`robustness/<shift>`).",
    ]


def serving_section(forward: ForwardPass, cost: tuple[float, str]) -> list[str]:
    rows = []
    for rung in forward.rungs:
        if "skipped" in rung:
            rows.append([rung["precision"], f"skipped: {rung['skipped']}", "", "", ""])
            continue
        sets = [rung.get(name) for name in ("test", "shifts")]
        verdict = "accepted" if rung["accepted"] else "rejected"
        rows.append(
            [rung["precision"], verdict, f"{rung['agreement']:.4f}"]
            + [f"{s['accuracy']:.4f} (eager {s['eager_accuracy']:.4f})" if s else "" for s in sets]
        )
    passes = "two forward passes (the photo and its mirror)" if forward.flip_tta else "one pass"
    return [
        "## Serving",
        "",
        f"Forward pass: {forward.describe()} (CPU units where the gate ran: "
        f"{', '.join(forward.host) or 'none'}). A rung is served when its labels agree with eager "
        f"float32's on at least {forward_gate.AGREEMENT} of the photos and its accuracy on each "
        f"set is within {forward_gate.ACCURACY} of eager's; the first that passes, in this order "
        "(eager PyTorch where none does):",
        "",
        *table(("precision", "verdict", "agreement", "test accuracy", "shift-set accuracy"), rows),
        "",
        f"Cost: {cost[0]:.1f} images/s of the forward pass alone ({passes} per image), timed "
        f"at publish on its host as a worker loads it ({cost[1]}); "
        "decoding and the server come on top: `python bench/serve.py` measures requests/s.",
    ]


def feedback_section(feedback: dict[str, int]) -> list[str]:
    counts = ", ".join(f"{label} {n}" for label, n in feedback.items())
    return [
        "## Feedback",
        "",
        f"Users' labels trained on: {sum(feedback.values())}{f' ({counts})' if counts else ''}, "
        "from feedback exports (`python -m catsdogs_pl.data feedback-export`) that prepare joined "
        "(`--add`) to the training split.",
    ]


def limits_section(classes: tuple[str, ...]) -> list[str]:
    names = " or ".join(classes)
    return [
        "## Intended use and limits",
        "",
        f"Photos of a {' or a '.join(classes)}, to say which. The model answers {names} whatever "
        "it is shown, so it is not for:",
        "",
        "- images that are not photos (drawings, cartoons, screenshots, text);",
        f"- other animals, or photos with no {names} in them;",
        "- photos unlike the training data (other cameras, light, framing, sizes): the robustness "
        "figures above say how far its accuracy holds, and the monitor's drift checks say when "
        "served traffic stops looking like it.",
    ]


def provenance_section(run_id: str, architecture: Architecture, data: Summary) -> list[str]:
    return [
        "## Provenance",
        "",
        f"- MLflow run: `{run_id}` (the servable export: `runs:/{run_id}/servable`)",
        f"- git commit: `{registry.git_commit()}`",
        f"- network: `{architecture.network}` {architecture.init_args}",
        f"- image size: {data.image_size} px",
    ]


def write(
    folder: Path,
    run_id: str,
    architecture: Architecture,
    data: Summary,
    figures: Figures,
    calibrated: Calibration,
    forward: ForwardPass,
    cost: tuple[float, str],
) -> Path:
    """`folder/servable.CARD`: the card of the export in `folder`, from its run's figures;
    `cost`: the served forward pass's images/s and how it was timed."""
    sections = [
        [f"# catsdogs {architecture.network}: {' vs '.join(data.classes)}"],
        data_section(data),
        evaluation_section(data, figures, forward),
        calibration_section(calibrated, figures),
        robustness_section(run_id, forward),
        serving_section(forward, cost),
        feedback_section(figures.feedback),
        limits_section(data.classes),
        provenance_section(run_id, architecture, data),
    ]
    front = metadata(run_id, data, figures, forward, architecture.network)
    body = "\n\n".join("\n".join(lines) for lines in sections)
    path = Path(folder) / servable.CARD
    path.write_text(f"---\n{front}\n---\n\n{body}\n")
    return path
