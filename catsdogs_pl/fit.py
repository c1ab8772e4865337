"""`python -m catsdogs_pl.fit --config configs/fit.yaml`: train, test, publish to MLflow, register.

The command users type; the training code lives in `catsdogs_pl.training`.
"""

from __future__ import annotations

import sys

from catsdogs_pl.errors import exit_code
from catsdogs_pl.training.fit import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(exit_code(main))  # LightningCLI reads sys.argv itself
