"""``python -m cbmir.bench``."""

from cbmir.bench.cli import main

main()
