"""``python -m cbmir.bench`` (a run) and ``python -m cbmir.bench compare OLD NEW``."""

import sys

from cbmir.bench.cli import main

status = main()
sys.exit(status if isinstance(status, int) else 0)
