"""One cell, in the order it runs: spec (the validated config, parsed once), run (cache or predict, then evaluate),
extract (the device-side model), store (shards and cache entries), evaluate (search → metrics → intervals → result
files), callback (the thin Lightning adapter around evaluate), loggers (CSV, W&B).

Imports data, models, search, metrics, stats, safety and report.gallery; only launch, index, doctor and bench import it.
"""
