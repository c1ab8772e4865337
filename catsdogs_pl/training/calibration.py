"""Temperature scaling (Guo et al., 2017): one number, fitted at publish on the validation split,
that makes the served confidence mean what it says.

finetune.yaml's label smoothing trains a network to be less sure than it is right (its test
confidence runs 2-3 points under its accuracy), and the monitor's estimated accuracy and the
feedback rules read that confidence. Dividing the logits by a temperature changes no label, so
it costs no accuracy; the export carries it as calibration.json and the handler applies it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from catsdogs_pl.contracts import Calibration
from catsdogs_pl.models.classifier import ECE_BINS

BOUNDS = (0.05, 20.0)  # the temperatures fit may choose: past them a split is too small to say


def ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Expected calibration error over ECE_BINS equal bins of the top-class probability: the
    definition of the test/ece the Lightning test loop logs."""
    if len(labels) == 0:
        return float("nan")
    probs = torch.as_tensor(np.asarray(probabilities), dtype=torch.float32)
    return float(
        multiclass_calibration_error(
            probs, torch.as_tensor(np.asarray(labels)), probs.shape[1], n_bins=ECE_BINS
        )
    )


def _log(probabilities: np.ndarray) -> torch.Tensor:
    """log p: the logits up to a constant per image, which the softmax ignores."""
    probs = torch.as_tensor(np.asarray(probabilities), dtype=torch.float64)
    return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """What serving answers at `temperature` for a network that answered `probabilities` at 1."""
    return (_log(probabilities) / temperature).softmax(-1).float().numpy()


def fit(probabilities: np.ndarray, labels: np.ndarray, split: str = "val") -> Calibration:
    """The temperature that minimises the negative log-likelihood of `labels` (the split's
    classes) under `probabilities`, found by L-BFGS on its logarithm."""
    log_p = _log(probabilities)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    temperature = 1.0
    if len(targets):
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(log_p / log_t.exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
        temperature = float(np.clip(log_t.exp().item(), *BOUNDS))
    return Calibration(
        temperature=temperature,
        split=split,
        images=len(targets),
        ece_before=ece(probabilities, labels),
        ece_after=ece(scale(probabilities, temperature), labels),
        bins=ECE_BINS,
    )
