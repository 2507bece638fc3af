"""A persistent search index and its users: build (from a cell), files (the checksummed folder), retrieve (load and
embed queries with the index's own spec), query (the command line) and serve (the web page).

``python -m cbmir.index build|info`` runs :mod:`cbmir.index.build`."""
