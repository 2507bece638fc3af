"""One cell, in the order it runs: spec (the validated config), run (cache or predict), extract (the device-side
model), store (shards and cache entries), evaluate (search → metrics → intervals → result files), loggers.

Imports data, models, search, metrics, stats, safety and report.gallery; only launch and index import it.
"""
