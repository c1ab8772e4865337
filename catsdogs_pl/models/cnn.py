"""`BaselineCNN`: a small residual network in plain torch, so serving needs no Lightning.

A stem of stride 2 (one convolution) or 4 (two: a quarter of the pixels for every later layer,
which on a CPU trains about 4x faster at the same input size), then `depth` stages of residual
blocks, each halving the resolution and doubling the width. In eval mode it can average the logits
of the image and its mirror (flip test-time augmentation), so training's evaluation and serving
compute exactly the same thing.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(c_in, c_out, stride), nn.ReLU(inplace=True), _conv_bn(c_out, c_out)
        )
        self.skip = (
            nn.Identity() if stride == 1 and c_in == c_out else _conv_bn(c_in, c_out, stride, 1)
        )
        self.act = nn.ReLU(inplace=True)
        nn.init.zeros_(
            self.body[-1][1].weight
        )  # each block starts as identity: faster early training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class BaselineCNN(nn.Module):
    """Residual CNN for small images; `init_args` (its constructor arguments) travel with the
    weights, so serving rebuilds exactly this network."""

    def __init__(
        self,
        num_classes: int = 2,
        width: int = 32,
        depth: int = 4,
        blocks_per_stage: int = 1,
        dropout: float = 0.2,
        flip_tta: bool = True,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        if num_classes < 2 or width < 1 or depth < 1 or blocks_per_stage < 1:
            raise ValueError(
                f"num_classes={num_classes}, width={width}, depth={depth}, "
                f"blocks_per_stage={blocks_per_stage}: need num_classes >= 2 and the rest >= 1"
            )
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride={stem_stride}: use 2 or 4")
        self.num_classes = num_classes
        self.flip_tta = flip_tta
        # the one record of the architecture: the export writes it, the handler rebuilds from it
        self.init_args = {
            "num_classes": num_classes,
            "width": width,
            "depth": depth,
            "blocks_per_stage": blocks_per_stage,
            "dropout": dropout,
            "flip_tta": flip_tta,
            "stem_stride": stem_stride,
        }
        stem = [width] if stem_stride == 2 else [max(1, width // 2), width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip([3, *stem[:-1]], stem, strict=True):
            layers += [_conv_bn(c_in, c_out, stride=2), nn.ReLU(inplace=True)]
        c_in = width
        for stage in range(depth):
            c_out = width * 2**stage
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(ResidualBlock(c_in, c_out, stride))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised float batch (N, 3, H, W)."""
        logits = self.head(self.features(x))
        if self.flip_tta and not self.training:
            logits = (logits + self.head(self.features(x.flip(-1)))) / 2
        return logits
