"""`python -m catsdogs_pl.feedback add FILE.csv`: users' labels for captured answers, in a batch.

The command users type; the feedback code lives in `catsdogs_pl.monitoring.feedback` (which also
serves `POST /feedback` on the monitor's port).
"""

from __future__ import annotations

import sys

from catsdogs_pl.errors import exit_code
from catsdogs_pl.monitoring.feedback import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
