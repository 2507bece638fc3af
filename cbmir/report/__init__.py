"""The study's tables and figures, built from result folders and compared with the published numbers.

``python -m cbmir.report outputs/ --out outputs/report`` finds every ``result.json`` under its
inputs and writes, per protocol (protocols are never mixed in one table or figure):

* ``results.csv``: one row per cell, every metric, timings, embedding size, versions;
* ``tables.md``: per metric, the paper's table shape (models × datasets, the sizes in each cell,
  best per column and size in bold), the mean over 2D (and 3D) datasets and each model's average rank;
* ``comparison.md|.csv`` (protocol ``paper`` only): ours, the paper's, and the difference for every
  cell of the study, with a per-model summary; missing published cells stay missing, never zero;
* ``figures/``: heatmaps (model × dataset, a panel per size), size curves (a panel per dataset,
  a line per model) and, for ``paper``, a paper-vs-cbmir scatter.

Everything is a small pure function over :class:`~cbmir.report.cells.Cell` records, so partial sweeps
(missing cells are blank) and the tests work on synthetic results. No pandas: the csv module and numpy
suffice; no torch: the report runs wherever the results are. One module per step, each importing only
the ones before it:

=============  ==============================================================================
``cells``      :class:`Cell`, one result, read from a ``result.json`` dict
``naming``     the paper's order and display names, protocols, number format
``collect``    find ``result.json`` files (folders, result folders, Hydra multirun dirs), load cells
``tables``     ``results.csv`` and ``tables.md``
``paper``      the published numbers and ``comparison.md|.csv``, ``comparison_summary.csv``
``figures``    heatmaps, size curves, the paper-vs-cbmir scatter
``build``      the report folder: all of the above per protocol, and ``index.md``
``wandb_run``  the report as one W&B run (``job_type=report``)
``cli``        ``python -m cbmir.report``
=============  ==============================================================================
"""
