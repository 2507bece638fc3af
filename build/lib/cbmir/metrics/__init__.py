"""Per-query retrieval metrics: the paper's five and the standard set (retrieval), exact MAP@R (at_r), hubness and
the leakage audit (diagnostics), per_query.npz files (per_query). Pure functions; imports search only."""
