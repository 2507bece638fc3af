"""``cbmir COMMAND …``: one console script for every step, dispatching lazily.

Nothing heavy is imported before a command is chosen, so ``cbmir --help`` and ``cbmir query --help`` answer
without importing torch. Each command is also reachable as ``python -m cbmir.<command>`` (``python -m cbmir.run``
is the form users know), and every command returns its exit status: 0 done, 1 failed, 2 a user error.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    summary: str
    argv0: str  # how the command names itself in --help and errors


COMMANDS: dict[str, Command] = {
    "run": Command("cbmir.launch.run", "run one cell, or sweep cells with -m (Hydra overrides)", "cbmir run"),
    "report": Command("cbmir.report.cli", "tables, figures and statistics from result folders", "cbmir report"),
    "index": Command("cbmir.index.build", "build, grow, shrink or describe a persistent search index", "cbmir index"),
    "query": Command("cbmir.index.query", "the most similar cases of an index for images or words", "cbmir query"),
    "serve": Command("cbmir.index.serve", "the search page and API of an index", "cbmir serve"),
    "doctor": Command("cbmir.doctor", "can this run or sweep go, here and now?", "cbmir doctor"),
    "bench": Command("cbmir.bench.cli", "throughput, efficiency, search and serving on this machine", "cbmir bench"),
}


def version() -> str:
    from cbmir import __version__

    return __version__


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return (
        "usage: cbmir [--version] COMMAND [ARGS …]\n\n"
        "Content-based medical image retrieval with frozen backbones.\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`cbmir COMMAND --help` describes one; `cbmir run -m model=uni,conch size=64,224` is a sweep."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"cbmir {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"cbmir: error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    sys.argv = [command.argv0, *rest]  # Hydra and argparse read sys.argv
    status = importlib.import_module(command.module).main(rest)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
