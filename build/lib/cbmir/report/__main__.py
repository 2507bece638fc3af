"""``python -m cbmir.report``: see :mod:`cbmir.report.cli`."""

import sys

from cbmir.report.cli import main

sys.exit(main())
