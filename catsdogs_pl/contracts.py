"""The JSON files that travel between data, training, serving and monitoring, as frozen dataclasses.

`preprocessing.json` and `summary.json` (written by prepare), `architecture.json`,
`reference.json` and `calibration.json` (written by fit into the servable export): each is
written and read only here, by `to_json` / `from_json`, so a key cannot be spelled two ways. Each
file carries its `format`; files written before formats existed (no `format` key, or
reference.json's old `schema`) are format 1 and load as they are. A file of a newer format than
this code knows is refused with its name.

Standard library only: every `.mar` ships this file as `catsdogs_contracts.py` (and errors.py as
`catsdogs_errors.py`) for the handler.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Self

if __package__:  # catsdogs_pl.contracts
    from catsdogs_pl.errors import ConfigError
else:  # catsdogs_contracts.py inside a .mar (serving/package.py ships it)
    from catsdogs_errors import ConfigError

FORMAT = "format"


class ContractError(ConfigError):
    """A contract file that this code cannot read; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Contract:
    """A JSON file with a name and a format: `write(folder)` / `read(folder)`."""

    FILE: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return {FORMAT: self.VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        version = data.pop(FORMAT, 1)
        if not isinstance(version, int) or version > cls.VERSION:
            raise ContractError(
                f"{cls.FILE} has format {version!r}; this catsdogs reads up to {cls.VERSION}: "
                "upgrade catsdogs or rewrite the file with this version"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
        if missing:
            raise ContractError(f"{cls.FILE} lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{cls.FILE} is not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ContractError(f"{cls.FILE} is not a JSON object")
        return cls.from_dict(data)

    def write(self, folder: Path) -> Path:
        """`folder/FILE`, written through a rename: a reader sees the old file or the new one."""
        path = Path(folder) / self.FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: Path) -> Self:
        return cls.from_json((Path(folder) / cls.FILE).read_text())


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Preprocessing(Contract):
    """The evaluation preprocessing, written by prepare and applied by training, robustness and
    the handler: size, normalisation, class order, and the limits that cleaning rejected by."""

    FILE: ClassVar[str] = "preprocessing.json"

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    min_side: int
    max_pixels: int
    resize: str = "stretch to image_size x image_size, bilinear, after EXIF transpose and RGB"
    crop: None = None

    def __post_init__(self) -> None:  # JSON gives lists: frozen means tuples
        for name in ("mean", "std", "classes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def limits(self) -> dict[str, int]:
        """The keyword arguments of `preprocessing.open_image`: what prepare rejected by."""
        return {"min_side": self.min_side, "max_pixels": self.max_pixels}

    def index_to_name(self) -> dict[str, str]:
        """TorchServe's `index_to_name.json` of the class order."""
        return {str(i): name for i, name in enumerate(self.classes)}


@dataclasses.dataclass(frozen=True)
class Architecture(Contract):
    """Which network the weights are for, with its constructor arguments. The file keeps the
    arguments beside `network` (`{"network": ..., "width": 32, ...}`); files from before
    `network` existed are BaselineCNN's."""

    FILE: ClassVar[str] = "architecture.json"

    network: str
    init_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {FORMAT: self.VERSION, "network": self.network, **self.init_args}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        args = dict(data)
        head = {key: args.pop(key) for key in (FORMAT, "network") if key in args}
        return super().from_dict({"network": "BaselineCNN", **head, "init_args": args})


@dataclasses.dataclass(frozen=True)
class Summary(Contract):
    """What prepare made of a source: counts per class, split and rejection reason, the settings
    that decided it, and `dataset_version` (the digest of the kept images, labels and splits)."""

    FILE: ClassVar[str] = "summary.json"

    dataset_version: str
    source: str
    classes: tuple[str, ...]
    files: int
    kept: int
    rejected: int
    by_label: dict[str, dict[str, int]]
    by_reason: dict[str, int]
    splits: dict[str, dict[str, int]]
    settings: dict[str, Any]
    source_fingerprint: str
    reused: dict[str, bool] = dataclasses.field(default_factory=dict)
    cache_rebuilt_because: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def image_size(self) -> int:
        return int(self.settings["image_size"])


@dataclasses.dataclass(frozen=True)
class Reference(Contract):
    """The validation statistics of a model version (monitoring.reference builds it): histogram
    counts in the buckets of `stats.EDGES`, the class balance of its predictions and its
    calibration, which the monitor compares served traffic with."""

    FILE: ClassVar[str] = "reference.json"

    split: str
    images: int
    edges: dict[str, list[float]]
    counts: dict[str, list[int]]
    classes: tuple[str, ...]
    predicted: dict[str, int]
    accuracy: float
    mean_confidence: float
    ece: float
    calibration: dict[str, list[Any]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        if FORMAT not in data and "schema" in data:  # its name before formats were shared
            data[FORMAT] = data.pop("schema")
        return super().from_dict(data)


@dataclasses.dataclass(frozen=True)
class Calibration(Contract):
    """The temperature that serving divides the logits by before the softmax, fitted at publish
    on the validation split (training/calibration.py), so that a confidence of 0.9 is right 9
    times in 10: the monitor and the feedback rules read the served confidence. With the split's
    expected calibration error before and after. An export without this file serves temperature 1."""

    FILE: ClassVar[str] = "calibration.json"

    temperature: float
    split: str
    images: int
    ece_before: float
    ece_after: float
    bins: int


@dataclasses.dataclass(frozen=True)
class ForwardPass(Contract):
    """The forward pass a version serves, chosen by its accuracy when it was published
    (training/forward_gate.py): the runtime, the precision and the graph file it runs, whether it
    averages the mirror's logits (flip TTA), and the figures that decided each choice. Exports
    without this file serve float32, with the runtime timed fastest as a worker loads."""

    FILE: ClassVar[str] = "forward.json"

    runtime: str  # openvino; auto: the fastest float32 runtime as a worker loads; eager
    precision: str  # bf16 | int8 | f32
    model: str  # the graph file in the export ("" for eager)
    flip_tta: bool
    rungs: list[dict[str, Any]]  # each rung tried, in ladder order: its figures and verdict
    tta: dict[str, Any]  # validation accuracy with and without flip TTA, and the rule
    host: list[str]  # the CPU's units where the gate ran (bf16, int8)

    def describe(self) -> str:
        """One line for `deploy list`, the logs and the README: what runs and why."""
        tta = "flip TTA" if self.flip_tta else "no flip TTA"
        return f"{self.runtime} {self.precision}, {tta}"
