"""``python -m cbmir.serve``: kept as a door to :mod:`cbmir.index.serve`."""

if __name__ == "__main__":
    from cbmir.index.serve import main

    main()
