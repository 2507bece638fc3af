"""Entry points of a run: the Hydra application (validate before heavy imports), the sweep summary, cluster launchers.

May import every floor below it; nothing imports it but the console script and ``python -m cbmir.run``.
"""
