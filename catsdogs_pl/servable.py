"""The servable contract: the files of a model export, and the one way to build and load its network.

An export folder holds `weights.pt` (a plain state_dict, loaded with `weights_only=True`: nothing is
unpickled), `architecture.json` (which network, with its constructor arguments),
`preprocessing.json` and `index_to_name.json` (from the prepared data, so serving cannot drift from
training) and, when fit wrote them, `reference.json` (what the monitor compares served traffic with)
and `calibration.json` (the temperature the served logits are divided by).

Torch only. Every `.mar` ships this file as `catsdogs_servable.py`, beside `catsdogs_contracts.py`
and the network modules as `catsdogs_<module>.py` (`NETWORKS`), and the handler loads with it: fit's
export, package, serving, robustness, the gate and the monitor all read a model the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if __package__:  # catsdogs_pl.servable
    from catsdogs_pl.contracts import (
        Architecture,
        Calibration,
        ForwardPass,
        Preprocessing,
        Reference,
    )
    from catsdogs_pl.errors import MissingError
else:  # catsdogs_servable.py inside a .mar (serving/package.py ships them all)
    from catsdogs_contracts import (
        Architecture,
        Calibration,
        ForwardPass,
        Preprocessing,
        Reference,
    )
    from catsdogs_errors import MissingError

WEIGHTS = "weights.pt"
INDEX_TO_NAME = "index_to_name.json"
ONNX = "model.onnx"  # the same forward pass for OpenVINO and ONNX Runtime, exported where it can be
INT8 = "model.int8.onnx"  # model.onnx quantised by NNCF, where the forward gate accepted it
CARD = "model_card.md"  # what the version is, from its run's figures (training/card.py)
PARITY = 1e-4  # the most a float32 runtime's probability may differ from eager PyTorch's
UNITS_ENV = "CATSDOGS_CPU_UNITS"  # overrides what host_units finds: "none", "bf16", "bf16,int8"
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo: int8 dot-product units
FILES = (WEIGHTS, Architecture.FILE, Preprocessing.FILE, INDEX_TO_NAME)
TRAINING_ONLY = ("weights",)  # where training starts from: the export's weights.pt replaces it
NETWORKS = {  # network class -> its module in catsdogs_pl/models (catsdogs_<module>.py in a .mar)
    "BaselineCNN": "cnn",
    "TorchvisionNet": "backbone",
    "EfficientNetLite": "efficientnet_lite",
    "EfficientNetLite0": "efficientnet_lite",  # exports made before lite1 and lite2
}


def network_class(name: str) -> type[nn.Module]:
    """The class `architecture.json` names, importing only its module (a baseline worker never
    imports torchvision)."""
    if name not in NETWORKS:
        raise ValueError(f"architecture.json names {name!r}; known networks: {', '.join(NETWORKS)}")
    module = NETWORKS[name]
    path = f"{__package__}.models.{module}" if __package__ else f"catsdogs_{module}"
    return getattr(importlib.import_module(path), name)


def architecture(net: nn.Module) -> Architecture:
    """What `net` is, from its `init_args`; refused when they leave out a constructor argument,
    which serving would otherwise rebuild with its default."""
    args = dict(net.init_args)
    signature = inspect.signature(type(net).__init__).parameters
    missing = [p for p in signature if p not in ("self", *args, *TRAINING_ONLY)]
    if missing:
        raise ValueError(
            f"{type(net).__name__}.init_args lacks {', '.join(missing)}: add them, or serving "
            "rebuilds the network with their defaults"
        )
    return Architecture(network=type(net).__name__, init_args=args)


def build(arch: Architecture) -> nn.Module:
    """The network `arch` describes, with fresh weights."""
    return network_class(arch.network)(**arch.init_args)


def export(
    net: nn.Module,
    preprocessing: Preprocessing,
    out: Path,
    reference: Reference | None = None,
    calibration: Calibration | None = None,
) -> Path:
    """Write the servable files (and the monitoring reference and the calibration, when given)
    into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for contract in (reference, calibration):
        if contract is not None:
            contract.write(out)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, out / WEIGHTS)
    architecture(net).write(out)
    preprocessing.write(out)
    (out / INDEX_TO_NAME).write_text(json.dumps(preprocessing.index_to_name(), indent=2))
    return out


def present(folder: Path) -> list[str]:
    """The servable files of `folder`: the four, and the reference, the calibration, model.onnx,
    the accepted forward pass, its int8 graph and the model card when it has them."""
    optional = (Reference.FILE, Calibration.FILE, ONNX, ForwardPass.FILE, INT8, CARD)
    return [*FILES, *(name for name in optional if (folder / name).exists())]


def load(folder: Path, weights: str = WEIGHTS) -> tuple[nn.Module, Preprocessing]:
    """The network in eval mode and its preprocessing, from an export folder (or an unpacked
    `.mar`, whose manifest may name the weights file otherwise)."""
    missing = [name for name in (weights, *FILES[1:]) if not (folder / name).exists()]
    if missing:
        raise MissingError(f"{folder} is not a servable export: missing {', '.join(missing)}")
    net = build(Architecture.read(folder))
    net.load_state_dict(torch.load(folder / weights, map_location="cpu", weights_only=True))
    return net.eval(), Preprocessing.read(folder)


def temperature(folder: Path) -> float:
    """What the served logits are divided by before the softmax: calibration.json's temperature,
    1 for an export made before calibration existed."""
    path = folder / Calibration.FILE
    return Calibration.read(folder).temperature if path.exists() else 1.0


class OnnxNet:
    """`model.onnx` under ONNX Runtime on the CPU, called like the network it was exported from
    (a float NCHW batch in, logits out). The file is a graph and its weights: loading it runs no
    code of its own."""

    runtime = "onnx"
    precision = "f32"

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(x.numpy())  # a permuted batch arrives with NHWC strides
        return torch.from_numpy(self.session.run(None, {"images": images})[0])


class OpenVinoNet:
    """A graph compiled by OpenVINO for the CPU, called like OnnxNet. Float32 unless asked
    otherwise (its default on CPUs with bf16 units is bf16, which only the forward gate may
    accept), and no pinning of threads to cores: TorchServe runs several workers, and each would
    pin to the same first cores. `precision` int8 is a graph NNCF quantised (servable.INT8): its
    quantised layers run int8, the rest float32."""

    runtime = "openvino"

    def __init__(
        self, path: Path, threads: int = 1, precision: str = "f32", streams: int = 1
    ) -> None:
        import openvino

        self.precision = precision
        config = {  # `streams` calls at once (from as many threads), `threads` threads each
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads * streams,
            "NUM_STREAMS": streams,
            "ENABLE_CPU_PINNING": False,
        }
        self.model = openvino.Core().compile_model(str(path), "CPU", config)
        self.requests = threading.local()  # an infer request serves one thread at a time

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        request = getattr(self.requests, "request", None)
        if request is None:
            request = self.requests.request = self.model.create_infer_request()
        images = np.ascontiguousarray(x.numpy())
        return torch.from_numpy(request.infer({0: images})[0].copy())


RUNTIMES = {"openvino": OpenVinoNet, "onnx": OnnxNet}  # runtime=auto: the first one installed
MODULES = {"openvino": "openvino", "onnx": "onnxruntime"}


def installed_runtimes() -> list[str]:
    """The runtimes of RUNTIMES whose package is installed, in order of preference."""
    return [name for name in RUNTIMES if importlib.util.find_spec(MODULES[name]) is not None]


def host_units() -> set[str]:
    """The reduced-precision units of this CPU that serving can use: `bf16` where OpenVINO
    reports them (avx512_bf16 or AMX), `int8` where the CPU has VNNI or AMX int8 dot products
    (without them int8 runs no faster than float32). Empty without OpenVINO. UNITS_ENV, where
    set, says instead (comma-separated; "none" serves float32 on any CPU)."""
    if (forced := os.environ.get(UNITS_ENV)) is not None:
        return {unit for unit in forced.replace(" ", "").split(",") if unit in ("bf16", "int8")}
    if importlib.util.find_spec("openvino") is None:
        return set()
    import openvino

    units = set()
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        units.add("bf16")
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    if flags.intersection(VNNI_FLAGS):
        units.add("int8")
    return units


def export_onnx(net: nn.Module, image_size: int, out: Path) -> float | None:
    """Write `out/model.onnx` (any batch size, `image_size` px) and return the largest probability
    difference from eager PyTorch on a random batch under any installed runtime (inf where the
    export fails); over PARITY the file is removed again. None where the exporter or every runtime
    is missing (serving then stays eager)."""
    runtimes = installed_runtimes()
    if importlib.util.find_spec("onnx") is None or not runtimes:  # the exporter writes through onnx
        return None
    x = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    path = out / ONNX
    try:
        with warnings.catch_warnings():  # tracing warns that shapes become constants: they are
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net.eval(),
                (x,),
                str(path),
                dynamo=False,  # the TorchScript exporter: no onnxscript, one file, static size
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        with torch.inference_mode():
            eager = net(x).softmax(-1)
        difference = max(
            float((RUNTIMES[name](path)(x).softmax(-1) - eager).abs().max()) for name in runtimes
        )
    except Exception as exc:  # an operator the exporter or runtime lacks: the model serves eager
        warnings.warn(f"{type(net).__name__} served eager: no ONNX export ({exc})", stacklevel=2)
        difference = float("inf")
    if difference > PARITY:
        path.unlink(missing_ok=True)
    return difference


def accepted(folder: Path) -> ForwardPass | None:
    """The reduced-precision forward pass the gate accepted for `folder`, where this host can
    run it; None where the gate accepted float32 (or never ran), or where this host lacks the
    units (warned: the version then serves float32, the gate's reference)."""
    if not (folder / ForwardPass.FILE).exists():
        return None
    chosen = ForwardPass.read(folder)
    if chosen.precision == "f32":
        return None
    if chosen.precision not in host_units() or not (folder / chosen.model).exists():
        warnings.warn(
            f"the forward gate accepted {chosen.describe()}, but this host has no "
            f"{chosen.precision} units (or no {chosen.model}): serving float32",
            stacklevel=2,
        )
        return None
    return chosen


def forward(
    folder: Path,
    net: nn.Module,
    runtime: str = "auto",
    threads: int = 1,
    batch: int = 8,
    streams: int = 1,
) -> Any:
    """What computes the logits in serving. `auto`: the reduced-precision pass the forward gate
    accepted (forward.json), where this host has its units; else, where `folder` holds
    model.onnx, whichever of the eager network and the installed runtimes (OpenVINO, ONNX
    Runtime) runs a batch of `batch` fastest on this machine, measured at load (no one runtime
    wins on every network: see docs/serving.md's figures); else the eager network. A runtime
    named (`openvino`, `onnx`, `eager`) is used as asked, in float32. `streams`: how many
    threads will call it at once (a server without workers of its own, serving/oip.py); ONNX
    Runtime and eager PyTorch take concurrent calls as they are, OpenVINO needs a stream each."""
    if runtime not in ("auto", *RUNTIMES, "eager"):
        raise ValueError(f"runtime={runtime!r}: use auto, {', '.join(RUNTIMES)} or eager")
    if runtime == "auto" and (chosen := accepted(folder)) is not None:
        return OpenVinoNet(folder / chosen.model, threads, chosen.precision, streams)
    if runtime == "eager" or (runtime == "auto" and not (folder / ONNX).exists()):
        return net

    def graph(name: str) -> Any:
        if name == "openvino":
            return OpenVinoNet(folder / ONNX, threads, streams=streams)
        return RUNTIMES[name](folder / ONNX, threads)

    if runtime != "auto":
        return graph(runtime)
    candidates = [net, *map(graph, installed_runtimes())]
    size = Preprocessing.read(folder).image_size
    x = torch.zeros(batch, 3, size, size)
    return min(candidates, key=lambda candidate: seconds(candidate, x))


def seconds(forward: Any, x: torch.Tensor, runs: int = 3) -> float:
    """The best of `runs` timed calls of `forward` on `x`, after one to warm it up."""
    times = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            start = time.perf_counter()
            forward(x)
            times.append(time.perf_counter() - start)
    return min(times[1:])
