"""What a finished fit leaves in MLflow, one step per function: the data it saw, the calibration
of its served confidence, the evaluation plots, the servable export (with the monitoring reference
and the model card, signed: catsdogs_pl/signing.py) and the logged model, and the registry version
with its alias.

`publish` runs the steps in order on the best checkpoint's weights and returns a `FitSummary`.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
import torch
import yaml
from mlflow import MlflowClient
from mlflow.models.model import ModelInfo

from catsdogs_pl import places, registry, servable, signing
from catsdogs_pl.contracts import Calibration, ForwardPass, Preprocessing, Reference
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.data.prepare import read_manifest
from catsdogs_pl.models.classifier import (
    TEST_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_LOSS,
    CatsDogsClassifier,
)
from catsdogs_pl.monitoring import reference
from catsdogs_pl.training import calibration, card, forward_gate, plots
from catsdogs_pl.training.card import TEST_ECE_SERVED

VAL_ECE = "val/ece"  # of the served probabilities on the split the temperature was fitted on
TEMPERATURE = "calibration/temperature"
Predictions = tuple[np.ndarray, np.ndarray, np.ndarray]  # images, targets, probabilities
COST_BATCH = 8  # images per forward pass when the card's serving cost is timed


@dataclass(frozen=True)
class FitSummary:
    """What one fit produced: where its run is and which registry version it became."""

    run_id: str
    tracking_uri: str
    registered_model: str
    version: str
    champion_moved: bool
    champion_reason: str
    test_metrics: dict[str, float]

    def report(self) -> str:
        """The lines `fit` prints when it is done."""
        lines = ["", "== catsdogs fit: done =="]
        lines += [f"{k}: {v:.4f}" for k, v in sorted(self.test_metrics.items())]
        lines += [
            f"MLflow run: {self.run_id}  ({self.tracking_uri})",
            f"registered: {self.registered_model} version {self.version}",
            f"champion alias moved: {'yes' if self.champion_moved else 'no'} "
            f"({self.champion_reason})",
            f"UI: mlflow ui --backend-store-uri {self.tracking_uri}",
        ]
        return "\n".join(lines)


def log_data(client: MlflowClient, run_id: str, dm: CatsDogsDataModule) -> None:
    """The dataset version as a param and the prepared data's summary as an artifact."""
    summary = dm.summary
    client.log_param(run_id, "data/dataset_version", summary.dataset_version)
    client.log_text(run_id, summary.to_json(), f"data/{summary.FILE}")


def predict(model: CatsDogsClassifier, dm: CatsDogsDataModule, split: str = "test") -> Predictions:
    """Images, targets and class probabilities of the val or test split in dataset order: the
    DataModule's batches and normalisation, the module's own `predict_step`. In this process
    alone, not through a Trainer: under DDP rank 0 publishes by itself, and `Trainer.predict`
    would wait at a barrier for ranks that are gone."""
    loader = {"val": dm.val_dataloader, "test": dm.predict_dataloader}[split]()
    model.eval()
    probs = []
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            batch = dm.on_after_batch_transfer(
                model.transfer_batch_to_device(batch, model.device, 0), 0
            )
            probs.append(model.predict_step(batch, i).float().cpu())
    data = dm.datasets[split]
    return np.load(data.images_path, mmap_mode="r"), data.labels, torch.cat(probs).numpy()


def calibrate(
    model: CatsDogsClassifier, dm: CatsDogsDataModule, val_logits: np.ndarray
) -> tuple[Calibration, Predictions, Predictions]:
    """The temperature fitted on the validation split (whose logits choose_flip_tta computed),
    and both splits' predictions as they will be served (calibrated)."""
    images, targets = forward_gate.split(dm, "val")
    val = (images, targets, torch.from_numpy(val_logits).softmax(-1).numpy())
    test = predict(model, dm, "test")
    fitted = calibration.fit(val[2], targets)
    served = [
        (*split[:2], calibration.scale(split[2], fitted.temperature)) for split in (val, test)
    ]
    return fitted, *served


def monitoring_reference(val: Predictions, dm: CatsDogsDataModule) -> Reference:
    """The validation split's input statistics, the served confidence on it and its
    calibration: what the monitor compares served traffic with."""
    images, targets, probs = val
    return reference.build(images, dm.original_sizes("val"), probs, targets, dm.classes)


def log_evaluation_plots(
    client: MlflowClient, run_id: str, test: Predictions, classes: list[str]
) -> None:
    """Learning curves from the run's history; confusion matrix, ROC and the most confident
    mistakes on the test split."""
    history = {
        k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
        for k in (TRAIN_LOSS + "_epoch", VAL_LOSS, VAL_ACC)
    }
    images, targets, probs = test
    figures = {
        "learning_curves": plots.learning_curves(history),
        "confusion_matrix": plots.confusion_matrix(targets, probs.argmax(1), classes),
        "roc_curve": plots.roc_curve(targets, probs[:, 1], classes[1]),
        "confident_mistakes": plots.confident_mistakes(images, targets, probs, classes),
    }
    for name, fig in figures.items():
        client.log_figure(run_id, fig, f"plots/{name}.png")
        plots.plt.close(fig)


def log_servable(
    client: MlflowClient,
    run_id: str,
    tracking_uri: str,
    net: torch.nn.Module,
    dm: CatsDogsDataModule,
    reference: Reference,
    calibrated: Calibration,
    tta: dict[str, Any],
    test_labels: np.ndarray,
    figures: card.Figures,
) -> tuple[ModelInfo, ForwardPass]:
    """The servable export with its monitoring reference, its calibration, the forward pass the
    gate accepted and the model card (what `package` archives), signed (model.sig), and the
    network as an MLflow model (what the registry version points at). The gate's figures also
    go to the run as `forward/...` metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = servable.export(net, dm.preprocessing, Path(tmp), reference, calibrated)
        forward = forward_gate.accept(net, dm, folder, tta, test_labels)
        arch = servable.architecture(net)
        cost = serving_cost(net, folder)
        card.write(folder, run_id, arch, dm.summary, figures, calibrated, forward, cost)
        signing.sign(folder, signing.private_key(places.home()))  # every file, model.onnx too
        client.log_artifacts(run_id, str(folder), "servable")
    for rung in forward.rungs:
        for name, figures in rung.items():
            if isinstance(figures, dict):
                client.log_metric(
                    run_id, f"forward/{rung['precision']}/{name}", figures["accuracy"]
                )
        if "agreement" in rung:
            client.log_metric(run_id, f"forward/{rung['precision']}/agreement", rung["agreement"])
    for name in ("val_accuracy_tta", "val_accuracy_no_tta"):
        if name in tta:
            client.log_metric(run_id, f"forward/{name}", tta[name])
    size = dm.settings.image_size
    example = np.zeros((2, 3, size, size), dtype=np.float32)  # batch 1 would be specialised
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # torch.export's archive writer warns when tensors share a storage that none of them
        # covers whole, "when your weights are not on CPU": they are (net.cpu()), so not the run's
        warnings.filterwarnings("ignore", "No complete tensor found in the group", UserWarning)
        info = mlflow.pytorch.log_model(net.cpu().eval(), name="model", input_example=example)
    return info, forward


def serving_cost(net: torch.nn.Module, folder: Path) -> tuple[float, str]:
    """Images/s of the forward pass a worker will serve from `folder`, chosen and timed as one
    loads it (model-config.yaml's torch_threads, a batch of COST_BATCH), and how: the card's
    cost figure, measured on the publishing host."""
    threads = int(yaml.safe_load(places.MODEL_CONFIG.read_text())["handler"]["torch_threads"])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        forward = servable.forward(folder, net.eval(), "auto", threads, COST_BATCH)
        size = Preprocessing.read(folder).image_size
        seconds = servable.seconds(forward, torch.zeros(COST_BATCH, 3, size, size))
    finally:
        torch.set_num_threads(before)
    runtime = f"{getattr(forward, 'runtime', 'eager')} {getattr(forward, 'precision', 'f32')}"
    return COST_BATCH / seconds, f"batch {COST_BATCH}, {threads} thread(s), {runtime}"


def register(
    client: MlflowClient,
    run_id: str,
    registered_model: str,
    info: ModelInfo,
    net: torch.nn.Module,
    dm: CatsDogsDataModule,
    metrics: dict[str, float],
    forward: ForwardPass,
) -> tuple[str, bool, str]:
    """A new registry version tagged with what makes it comparable and the forward pass it
    serves; the champion alias moves to it when it earned it. Returns (version, alias moved,
    why)."""
    data = dm.summary
    tags = {
        registry.DATASET_TAG: data.dataset_version,
        "git_commit": registry.git_commit(),
        TEST_ACC: f"{metrics[TEST_ACC]:.6f}",
        registry.FORWARD_TAG: forward.describe(),
    }
    description = (
        f"{type(net).__name__} {getattr(net, 'init_args', {})} at {dm.settings.image_size}px; "
        f"{TEST_ACC}={metrics[TEST_ACC]:.4f} on dataset {data.dataset_version} "
        f"({data.splits['test']['total']} test images); servable export in "
        f"runs:/{run_id}/servable"
    )
    version = registry.register(
        client, registered_model, info.model_uri, run_id, tags, description, info.model_id
    )
    moved, reason = registry.update_champion(client, registered_model, version, TEST_ACC)
    return str(version.version), moved, reason


def publish(
    trainer: L.Trainer,
    model: CatsDogsClassifier,
    dm: CatsDogsDataModule,
    store: registry.MlflowSettings,
    tracking_uri: str,
) -> FitSummary:
    """Every step above for the tested best checkpoint of `trainer`'s run."""
    run_id = trainer.logger.run_id
    client = MlflowClient(tracking_uri)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    log_data(client, run_id, dm)
    client.log_artifact(run_id, trainer.checkpoint_callback.best_model_path, "checkpoints")
    tta, val_logits = forward_gate.choose_flip_tta(model.net, dm)  # what is served from here on
    fitted, val, test = calibrate(model, dm, val_logits)
    metrics[TEST_ECE_SERVED] = calibration.ece(test[2], test[1])
    # every */ece is calibration.ece: 15 equal bins (reference.json's is in the monitor's buckets)
    logged = {VAL_ECE: fitted.ece_after, TEMPERATURE: fitted.temperature}
    for key, value in {**logged, TEST_ECE_SERVED: metrics[TEST_ECE_SERVED]}.items():
        client.log_metric(run_id, key, value)
    log_evaluation_plots(client, run_id, test, dm.classes)
    monitored = monitoring_reference(val, dm)
    eager = test[2].argmax(1)  # eager float32's answers on the test split, flip TTA as chosen
    figures = card.Figures(
        test=metrics,
        val_accuracy=float(trainer.checkpoint_callback.best_model_score),
        eager_accuracy=float((eager == test[1]).mean()),
        feedback=card.feedback_labels(read_manifest(dm.out / "manifest.csv")),
    )
    info, forward = log_servable(
        client, run_id, tracking_uri, model.net, dm, monitored, fitted, tta, eager, figures
    )
    version, moved, reason = register(
        client, run_id, store.registered_model, info, model.net, dm, metrics, forward
    )
    return FitSummary(run_id, tracking_uri, store.registered_model, version, moved, reason, metrics)
