"""Promotion-gate helpers: photos whose class is their brightness, networks of known accuracy on
them, and those networks as extra versions of the session registry."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from PIL import Image

from catsdogs_pl import places, preprocessing, registry, servable
from catsdogs_pl.models.cnn import BaselineCNN
from catsdogs_pl.serving import sign
from tests.helpers.serving import ARCH, SIZE

CLASSES = ["cat", "dog"]
BRIGHTNESS = {"cat": (20, 70), "dog": (180, 235)}  # grey levels a class's photos are drawn from


def make_gate_folder(root: Path, per_class: int = 20) -> Path:
    """root/cat/*.jpg dark, root/dog/*.jpg bright: noisy grey photos of varied sizes."""
    rng = np.random.default_rng(0)
    for name, (lo, hi) in BRIGHTNESS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            width, height = (int(v) for v in rng.integers(40, 120, 2))
            level = rng.integers(lo, hi)
            pixels = np.clip(level + rng.normal(0, 8, (height, width, 3)), 0, 255)
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, "JPEG")
            (root / name / f"{i:03d}.jpg").write_bytes(buffer.getvalue())
    return root


@torch.no_grad()
def brightness_net(dog_when_bright: bool = True) -> BaselineCNN:
    """A network set by hand to answer by brightness: right on every gate photo, or (False) wrong
    on every one. The stem averages the normalised pixels, ReLU keeps what is brighter than the
    dataset mean, the blocks pass it on unchanged, and the head thresholds it."""
    net = BaselineCNN(**ARCH).eval()
    for p in net.parameters():
        p.zero_()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # identity in eval mode
            module.weight.fill_(1)
            module.running_mean.zero_()
            module.running_var.fill_(1)
    net.features[0][0].weight.fill_(1 / 27)  # 3x3x3 average into every channel
    for block in net.features[2:]:  # residual bodies are zero: the skips carry the brightness
        if not isinstance(block.skip, torch.nn.Identity):
            conv = block.skip[0].weight  # 1x1: channel i to channel i
            conv[torch.arange(conv.shape[1]), torch.arange(conv.shape[1])] = 1
    dog = 1.0 if dog_when_bright else -1.0
    net.head[-1].weight[1].fill_(dog)  # logit(dog) - logit(cat) = ±(summed brightness - 2)
    net.head[-1].bias[1] = -2.0 * dog
    return net


def register_versions(home: Path, nets: list[BaselineCNN]) -> list[str]:
    """Each network as a new registry version of catsdogs, as SessionTorchServe.start registers
    versions 1 and 2: its export as the run's `servable` artifacts."""
    client = MlflowClient(registry.resolve_tracking_uri())
    experiment = client.get_experiment_by_name("it").experiment_id
    versions = []
    for i, net in enumerate(nets):
        run = client.create_run(experiment)
        folder = servable.export(net, preprocessing.spec(SIZE, CLASSES), home / f"gate-export{i}")
        sign.sign_export(folder)  # as publish signs every version
        client.log_artifacts(run.info.run_id, str(folder), "servable")
        registered = registry.register(
            client, places.MODEL_NAME, "servable", run.info.run_id, {}, "gate test"
        )
        versions.append(str(registered.version))
    return versions


def delete_versions(versions: list[str]) -> None:
    """Registry versions and their archives gone: a later registration under the same number
    must not find a stale archive in the model store."""
    client = MlflowClient(registry.resolve_tracking_uri())
    for version in versions:
        client.delete_model_version(places.MODEL_NAME, version)
        for mar in places.model_store().glob(places.mar_name(version, "*")):
            mar.unlink()
