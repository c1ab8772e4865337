"""The forward pass a version serves, accepted by its accuracy, not by sameness.

A classifier promises its users an accuracy, not eager float32's exact probabilities, and a CPU
with bf16 or int8 units computes the same labels for a fraction of the cost. So at publish, after
flip TTA is chosen on the validation split (`choose_flip_tta`: served only where it buys
>= TTA_GAIN), `accept` walks the ladder and serves the first rung that passes:

1. bf16: model.onnx under OpenVINO with INFERENCE_PRECISION_HINT bf16, where the CPU has bf16 units;
2. int8: model.onnx quantised by NNCF (post-training, calibrated on CALIBRATION training photos,
   never test ones) under OpenVINO, where the CPU has VNNI or AMX int8 units;
3. f32: model.onnx (within servable.PARITY of eager when it was exported), the fastest float32
   runtime timed as a worker loads;
4. eager PyTorch (no runtime could take the network).

A rung passes when, on the test split and on the robustness shifts of SHIFT_PHOTOS test photos,
its labels agree with eager float32's on >= AGREEMENT of the photos and its accuracy on each is
within ACCURACY of eager's. Every rung tried is kept with its figures in forward.json, which
travels in the servable export into the `.mar`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from catsdogs_pl import servable
from catsdogs_pl.contracts import ForwardPass, Preprocessing
from catsdogs_pl.data.datamodule import CatsDogsDataModule
from catsdogs_pl.errors import MissingError
from catsdogs_pl.predictor import Predictor, normalised
from catsdogs_pl.training import robustness

AGREEMENT = 0.995  # the least share of photos whose label must be eager float32's
ACCURACY = 0.003  # the most accuracy a rung may lose against eager float32, on each set
TTA_GAIN = 0.003  # the least validation accuracy flip TTA must buy to be served (its cost is 2x)
CALIBRATION = 300  # training photos NNCF calibrates int8 on
SHIFT_PHOTOS = 200  # test photos scored under every robustness shift
BATCH = 32
LADDER = ("bf16", "int8", "f32")  # then eager

Sets = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (uint8 NHWC images, class indices)


def logits(forward: Any, pre: Preprocessing, images: np.ndarray) -> np.ndarray:
    """Logits (N x classes, float32) of uint8 NHWC images, BATCH at a time, as served."""
    return Predictor(forward, pre).logits(images, BATCH)


def predict(forward: Any, pre: Preprocessing, images: np.ndarray) -> np.ndarray:
    """Class indices of uint8 NHWC images."""
    return logits(forward, pre, images).argmax(1)


def split(dm: CatsDogsDataModule, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A cached split as served: the cache is the handler's decode of each photo."""
    data = dm.datasets[name]
    return np.load(data.images_path, mmap_mode="r"), data.labels


def choose_flip_tta(net: nn.Module, dm: CatsDogsDataModule) -> tuple[dict[str, Any], np.ndarray]:
    """Serve flip TTA only where it buys >= TTA_GAIN of validation accuracy: set on `net` (and
    its init_args, so architecture.json says what is served). Returns the figures and the
    validation logits as served. Every network's TTA averages the logits of the photo and of its
    mirror, so one pass over each answers with and without it."""
    images, targets = split(dm, "val")
    pre = dm.preprocessing
    if not hasattr(net, "flip_tta"):
        return {"flip_tta": False, "rule": "the network has no flip TTA"}, logits(net, pre, images)
    net.flip_tta = False
    plain = logits(net.eval(), pre, images)
    mirrored = (plain + logits(net, pre, images[:, :, ::-1])) / 2
    accuracy = {
        tta: float((found.argmax(1) == targets).mean())
        for tta, found in ((True, mirrored), (False, plain))
    }
    gain = accuracy[True] - accuracy[False]
    net.flip_tta = net.init_args["flip_tta"] = gain >= TTA_GAIN
    figures = {
        "flip_tta": net.flip_tta,
        "val_accuracy_tta": accuracy[True],
        "val_accuracy_no_tta": accuracy[False],
        "gain": gain,
        "rule": f"served where it buys >= {TTA_GAIN} of validation accuracy ({len(targets)} photos)",
    }
    return figures, mirrored if net.flip_tta else plain


def evaluation_sets(
    dm: CatsDogsDataModule, photos: int = SHIFT_PHOTOS
) -> tuple[Sets, str, np.ndarray]:
    """The test split, and the shifts of robustness.SHIFTS on `photos` test photos decoded from
    their original bytes (left out, saying why, where the source is gone); the shift of each
    image of the shift set."""
    sets: Sets = {"test": split(dm, "test")}
    pre = dm.preprocessing
    try:
        chosen = robustness.load_test_photos(dm.out, dm.summary, dm.classes, photos)
    except MissingError as exc:
        return sets, f"test split only: {exc}", np.array([])
    images, targets, kinds = [], [], []
    predictor = Predictor(None, pre)  # decodes only
    for path, label, sha256 in chosen:
        decoded = robustness.decode_all(path, sha256, predictor)
        for kind, image in list(zip(robustness.SHIFTS, decoded, strict=True))[1:]:
            if image is not None:  # [0] is the unshifted upload: the test split has it
                images.append(image)
                targets.append(label)
                kinds.append(kind)
    if images:
        sets["shifts"] = (np.stack(images), np.array(targets))
    scope = f"test split and {len(robustness.SHIFTS) - 1} shifts of {len(chosen)} photos"
    return sets, scope, np.array(kinds)


def by_shift(
    found: np.ndarray, eager: np.ndarray, targets: np.ndarray, kinds: np.ndarray
) -> dict[str, dict[str, Any]]:
    """A rung's accuracy on the shift set under each shift, beside eager float32's: what the
    model card reports (the rule judges the whole set: 200 photos a shift are too few for it)."""
    return {
        kind: {
            "accuracy": float((found[kinds == kind] == targets[kinds == kind]).mean()),
            "eager_accuracy": float((eager[kinds == kind] == targets[kinds == kind]).mean()),
            "photos": int((kinds == kind).sum()),
        }
        for kind in dict.fromkeys(kinds.tolist())
    }


def quantize_int8(folder: Path, pre: Preprocessing, calibration: np.ndarray) -> Path:
    """`folder/servable.INT8`: model.onnx quantised by NNCF, calibrated on `calibration`."""
    import nncf  # optional: the onnx extra installs it
    import onnx

    def item(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"images": normalised([image], pre).numpy()}

    quantized = nncf.quantize(
        onnx.load(folder / servable.ONNX),
        nncf.Dataset(list(calibration), item),
        subset_size=len(calibration),
    )
    onnx.save(quantized, folder / servable.INT8)
    return folder / servable.INT8


def unavailable(precision: str, folder: Path, units: set[str]) -> str | None:
    """Why `precision` cannot be tried here, or None."""
    if not (folder / servable.ONNX).exists():
        return "no model.onnx (the exporter or every runtime is missing, or it failed parity)"
    if precision == "f32":
        return None
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed"
    if precision not in units:
        what = "bf16" if precision == "bf16" else "int8 dot-product (VNNI or AMX)"
        return f"this CPU has no {what} units"
    if precision == "int8" and importlib.util.find_spec("nncf") is None:
        return "nncf is not installed"
    return None


def candidate(precision: str, folder: Path, pre: Preprocessing, dm: CatsDogsDataModule) -> Any:
    """The forward pass of one rung, built in `folder`."""
    threads = len(os.sched_getaffinity(0))
    if precision == "int8":
        images = split(dm, "train")[0]
        pick = np.random.default_rng(0).permutation(len(images))[:CALIBRATION]
        return servable.OpenVinoNet(
            quantize_int8(folder, pre, images[np.sort(pick)]), threads, "int8"
        )
    if precision == "bf16":
        return servable.OpenVinoNet(folder / servable.ONNX, threads, "bf16")
    name = servable.installed_runtimes()[0]
    return servable.RUNTIMES[name](folder / servable.ONNX, threads)


def score(found: dict[str, np.ndarray], eager: dict[str, np.ndarray], sets: Sets) -> dict[str, Any]:
    """A rung's figures against eager float32's, and whether it passes."""
    figures: dict[str, Any] = {}
    agree = total = 0
    passed = True
    for name, (_, targets) in sets.items():
        accuracy = float((found[name] == targets).mean())
        reference = float((eager[name] == targets).mean())
        figures[name] = {"accuracy": accuracy, "eager_accuracy": reference, "photos": len(targets)}
        passed &= reference - accuracy <= ACCURACY + 1e-9  # 1.0 - 0.997 is 0.0030000000000000027
        agree += int((found[name] == eager[name]).sum())
        total += len(targets)
    figures["agreement"] = agree / total
    figures["accepted"] = bool(passed and figures["agreement"] >= AGREEMENT)
    return figures


def describe(rung: dict[str, Any]) -> str:
    """One printed line per rung tried."""
    if "skipped" in rung:
        return f"forward gate: {rung['precision']} skipped ({rung['skipped']})"
    sets = ", ".join(
        f"{name} {rung[name]['accuracy']:.4f} (eager {rung[name]['eager_accuracy']:.4f})"
        for name in rung
        if isinstance(rung[name], dict)
    )
    verdict = "accepted" if rung["accepted"] else "rejected"
    return f"forward gate: {rung['precision']} {verdict}: agreement {rung['agreement']:.4f}, {sets}"


def accept(
    net: nn.Module,
    dm: CatsDogsDataModule,
    folder: Path,
    tta: dict[str, Any],
    test_labels: np.ndarray | None = None,
) -> ForwardPass:
    """Export model.onnx into the servable `folder`, walk the ladder, write forward.json (and the
    int8 graph where int8 is served) and return it; each rung's line is printed. `test_labels`:
    eager float32's answers on the test split, where the caller has them (one pass fewer)."""
    pre = dm.preprocessing
    servable.export_onnx(net, pre.image_size, folder)
    if "gain" in tta:
        served = "served" if tta["flip_tta"] else "not served"
        print(
            f"forward gate: flip TTA {served}: validation accuracy {tta['val_accuracy_tta']:.4f} "
            f"with it, {tta['val_accuracy_no_tta']:.4f} without (it must buy >= {TTA_GAIN})"
        )
    sets, scope, kinds = evaluation_sets(dm)
    print(f"forward gate: eager float32 against each rung on the {scope}")
    eager = {
        name: test_labels
        if name == "test" and test_labels is not None
        else predict(net.eval(), pre, images)
        for name, (images, _) in sets.items()
    }
    units = servable.host_units()
    rungs: list[dict[str, Any]] = []
    chosen: tuple[str, str, str] = ("eager", "f32", "")
    for precision in LADDER:
        if why := unavailable(precision, folder, units):
            rungs.append({"precision": precision, "skipped": why})
        else:
            forward = candidate(precision, folder, pre, dm)
            found = {name: predict(forward, pre, images) for name, (images, _) in sets.items()}
            rungs.append({"precision": precision, **score(found, eager, sets)})
            if "shifts" in sets:
                rungs[-1]["shifts"]["by_shift"] = by_shift(
                    found["shifts"], eager["shifts"], sets["shifts"][1], kinds
                )
        print(describe(rungs[-1]))
        if rungs[-1].get("accepted"):
            runtime = "auto" if precision == "f32" else "openvino"
            model = servable.INT8 if precision == "int8" else servable.ONNX
            chosen = (runtime, precision, model)
            break
    if chosen[1] != "int8":
        (folder / servable.INT8).unlink(missing_ok=True)
    forward = ForwardPass(*chosen, net.flip_tta, rungs, tta, sorted(units))
    forward.write(folder)
    print(f"forward gate: serving {forward.describe()}")
    return forward
