"""`python -m catsdogs_pl.monitor`: served traffic against each version's training reference.

The command users type; the monitoring code lives in `catsdogs_pl.monitoring`.
"""

from __future__ import annotations

import sys

from catsdogs_pl.errors import exit_code
from catsdogs_pl.monitoring.monitor import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(exit_code(main, sys.argv[1:]))
