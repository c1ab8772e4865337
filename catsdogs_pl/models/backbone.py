"""`TorchvisionNet`: a torchvision classification network (MobileNetV3, ResNet, EfficientNet, ...)
with a head of `num_classes`, for fine-tuning a pretrained backbone.

`weights` starts it from pretrained weights: the name of a torchvision weights enum entry
("DEFAULT", "IMAGENET1K_V1": downloaded by torchvision, so a machine with internet access), or the
path of a local state_dict file (read with weights_only=True). Every tensor whose shape fits is
loaded, so an ImageNet head of 1000 classes is left out and the new head starts fresh. Serving
needs no `weights`: the export's `weights.pt` holds the fine-tuned ones, and `init_args` (what the
export writes to `architecture.json`) leave it out.

torch and torchvision only: the `.mar` ships this file as `catsdogs_backbone.py`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights


def _pretrained(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """The state_dict of `weights`: a local file, else a torchvision weights name of `arch`."""
    path = Path(weights).expanduser()
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    known = get_model_weights(arch)
    if weights not in known.__members__:
        raise ValueError(
            f"weights={weights!r}: neither a file nor one of {arch}'s torchvision weights "
            f"{list(known.__members__)}"
        )
    try:
        return known[weights].get_state_dict(progress=False)  # downloads once into TORCH_HOME
    except OSError as exc:
        raise ValueError(
            f"weights={weights!r}: torchvision could not download {known[weights].url} ({exc}); "
            "without internet access, copy that file here and pass its path as weights"
        ) from exc


class TorchvisionNet(nn.Module):
    """torchvision's `arch` for `num_classes`, optionally from pretrained `weights`; `init_args`
    travel with the export, so serving rebuilds exactly this network."""

    def __init__(
        self,
        arch: str = "mobilenet_v3_small",
        num_classes: int = 2,
        weights: str | None = None,
        flip_tta: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: need at least 2")
        self.num_classes = num_classes
        self.flip_tta = flip_tta
        self.init_args = {"arch": arch, "num_classes": num_classes, "flip_tta": flip_tta}
        self.model = get_model(arch, weights=None, num_classes=num_classes)
        if weights:
            own = self.model.state_dict()
            found = _pretrained(arch, weights)
            fitting = {k: v for k, v in found.items() if k in own and own[k].shape == v.shape}
            if len(fitting) < len(own) // 2:  # a file of another network, not a head mismatch
                raise ValueError(
                    f"weights={weights!r}: only {len(fitting)} of {arch}'s {len(own)} tensors "
                    "match: is it a state_dict of this architecture?"
                )
            self.model.load_state_dict(fitting, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised float batch (N, 3, H, W); in eval mode averaged with the
        mirrored image's, as BaselineCNN does."""
        logits = self.model(x)
        if self.flip_tta and not self.training:
            logits = (logits + self.model(x.flip(-1))) / 2
        return logits
