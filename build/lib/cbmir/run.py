"""``python -m cbmir.run``: the command users know, kept as a door to :mod:`cbmir.launch.run`."""

if __name__ == "__main__":
    from cbmir.launch.run import main

    main()
