"""The study's tables and figures, built from result folders and compared with the published numbers.

``python -m cbmir.report outputs/ --out outputs/report`` finds every ``result.json`` under its
inputs and writes, per protocol (protocols are never mixed in one table or figure):

* ``results.csv``: one row per cell, every metric, timings, embedding size, versions;
* ``tables.md``: per metric, the paper's table shape (models × datasets, the sizes in each cell,
  best per column and size in bold), the mean over 2D (and 3D) datasets and each model's average rank;
  each value with its bootstrap interval (``83.18 ±1.05``) and ``≈`` where it is not significantly
  worse than the best (``--no-ci``: values only, the paper's shape);
* ``pairwise.md|.csv``: every pair of models per (dataset, size), paired difference and corrected p-value;
* ``per_class.md``: each metric per class, where the cells store per-class means;
* ``comparison.md|.csv`` (protocol ``paper`` only): ours, the paper's, and the difference for every
  cell of the study, with a per-model summary; missing published cells stay missing, never zero;
* ``figures/``: heatmaps (model × dataset, a panel per size), size curves (a panel per dataset,
  a line per model), forest plots (value and interval per model), critical-difference diagrams
  (per metric and size, across datasets) and, for ``paper``, a paper-vs-cbmir scatter.

Everything is a small pure function over :class:`~cbmir.report.cells.Cell` records, so partial sweeps
(missing cells are blank) and the tests work on synthetic results. Only stored files are read (result.json,
per_query.npz, for old results neighbors.npy and the labels); no torch: the report runs wherever the results
are. One module per step, each importing only the ones before it:

==================  ==============================================================================
``cells``           :class:`Cell`, one result, read from a ``result.json`` dict
``naming``          the paper's order and display names, protocols, number format
``collect``         find ``result.json`` files (folders, result folders, Hydra multirun dirs), load cells
``queries``         a cell's per-query scores (per_query.npz, or rescored from neighbors.npy)
``significance``    intervals and paired comparisons per (dataset, size); the tables' marks
``tables``          ``results.csv`` and ``tables.md``
``paper``           the published numbers and ``comparison.md|.csv``, ``comparison_summary.csv``
``pairwise``        ``pairwise.md|.csv``
``per_class``       ``per_class.md``
``figures``         heatmaps, size curves, the paper-vs-cbmir scatter
``stat_figures``    forest plots and CD diagrams
``build``           the report folder: all of the above per protocol, and ``index.md``
``wandb_run``       the report as one W&B run (``job_type=report``)
``cli``             ``python -m cbmir.report``
==================  ==============================================================================
"""
