"""`python -m catsdogs_pl.feedback {add FILE.csv,labeller add NAME,prune}`: users' labels for
captured answers in a batch, the labellers' keys, and the capture store's bounds applied now.

The command users type; the feedback code lives in `catsdogs_pl.monitoring.feedback` (which also
serves `POST /feedback` on the monitor's port) and `catsdogs_pl.monitoring.labellers`.
"""

from __future__ import annotations

import sys

from catsdogs_pl.errors import exit_code
from catsdogs_pl.monitoring.feedback import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
