"""``python -m cbmir.query``: kept as a door to :mod:`cbmir.index.query`."""

if __name__ == "__main__":
    from cbmir.index.query import main

    main()
