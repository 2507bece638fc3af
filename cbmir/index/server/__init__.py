"""The search server's parts, each with one job: uploads, the work pool, access, limits, audit, rows, generations."""
