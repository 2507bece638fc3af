"""Before any heavy import: compose the command line's cells as Hydra will and build their specs.

``cbmir run`` calls :func:`preflight` before Hydra's application starts, so that an unknown model, a bad size or a
mistyped key is one sentence and exit status 2 within a second or two, not a traceback after lightning and torch
have loaded (or Hydra's own exit 1 with its ``HYDRA_FULL_ERROR`` hint). A sweep is checked axis by axis: every
value of every swept key once (the first value of the others beside it), not every combination, so
``-m experiment=paper`` costs about twenty compositions, not 252. A combination a dataset cannot take (a size
it lacks) is still skipped by the sweep itself, as before.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from cbmir.errors import ConfigError, InvalidCellError
from cbmir.layout import CONF_DIR

#: Hydra's flags that take a value (the value is the next argument unless written ``--flag=value``).
VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
#: Flags after which Hydra does something other than run cells (help, printing the config, completion).
INSPECT_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
}
#: Configs renamed in a release: the old name, for a one-line pointer to the new one.
RENAMED = {"model/any_timm": "model=timm", "model/any_open_clip": "model=open_clip"}


@dataclass
class CommandLine:
    """Hydra's command line taken apart: overrides, multirun, and where the configs come from."""

    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    config_name: str = "config"
    config_dir: Path | None = None
    inspect: bool = False


def parse_command_line(args: Sequence[str]) -> CommandLine:
    line = CommandLine()
    items = iter(args)
    for arg in items:
        flag, _, inline = arg.partition("=")
        if arg in ("-m", "--multirun"):
            line.multirun = True
        elif arg in INSPECT_FLAGS or flag in INSPECT_FLAGS:
            line.inspect = True
        elif flag in VALUE_FLAGS:
            value = inline if arg.startswith("--") and inline else next(items, "")
            if flag in ("--config-name", "-cn"):
                line.config_name = value
            elif flag in ("--config-dir", "-cd"):
                line.config_dir = Path(value).expanduser().resolve()
        elif arg.startswith("-"):
            line.inspect = True  # a flag cbmir does not know: Hydra answers it
        else:
            line.overrides.append(arg)
    return line


def compose(overrides: list[str], *, config_name: str = "config", config_dir: Path | None = None, hydra: bool = False):
    """The config tree composed as the command line would; Hydra's composition errors become one sentence."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides + extra, return_hydra_config=hydra)
    except MissingConfigException as exc:
        raise ConfigError(_missing(exc)) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_first_line(exc)) from None


def _missing(exc: Exception) -> str:
    text = _first_line(exc)
    for old, new in RENAMED.items():
        if f"'{old}'" in text:
            return f"{old.replace('/', '=')} was renamed: use {new}"
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    options = sorted(o for o in getattr(exc, "options", None) or [] if not o.startswith("_"))  # _x: bases
    if missing:
        text = f"{missing.group(1).replace('/', '.')}={missing.group(2)}: no such config"
    return text + (f"; one of: {', '.join(options)}" if options else "")


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).rstrip(".")


def sweep_axes(overrides: list[str], **where) -> dict[str, list[str]]:
    """Each swept key's overrides (``model=uni``, ``model=conch``), an experiment's own sweep included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(_first_line(exc)) from None
    axes: dict[str, list[str]] = {}
    experiment = next((o.value() for o in parsed if o.key_or_group == "experiment"), None)
    if experiment:
        base = compose([f"experiment={experiment}"], hydra=True, **where)
        for key, value in (base.hydra.sweeper.params or {}).items():
            axes[key] = [f"{key}={v}" for v in _values(parser.parse_overrides([f"{key}={value}"])[0])]
    for o in parsed:
        axes[o.input_line.split("=", 1)[0]] = [f"{o.get_key_element()}={v}" for v in _values(o)]
    return axes


def _values(override) -> list[str]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def every_cell(axes: dict[str, list[str]]) -> list[list[str]]:
    """Every combination: the cells of the sweep (``cbmir doctor`` checks each)."""
    return [list(cell) for cell in itertools.product(*axes.values())]


def each_value(axes: dict[str, list[str]]) -> list[list[str]]:
    """Every value of every axis once, beside the first value of the others: enough to find any bad value."""
    first = [values[0] for values in axes.values()]
    variants = [first]
    for i, values in enumerate(axes.values()):
        variants += [first[:i] + [value] + first[i + 1 :] for value in values[1:]]
    return variants


def _launched_externally() -> bool:
    """torchrun/SLURM start the processes themselves, so Lightning must not re-execute the command line."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """A sweep on several processes must come from torchrun or SLURM."""
    many = str(cfg.trainer.strategy).startswith("ddp") and (
        cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes > 1
    )
    if many and multirun and not _launched_externally():
        raise ConfigError(
            "a multi-process sweep must be launched by torchrun (or SLURM), or Lightning re-executes the "
            "command line into duplicate sweeps: torchrun --nproc_per_node=N -m cbmir.run -m trainer=ddp "
            "trainer.devices=N ..."
        )


def preflight(args: Sequence[str]) -> list[DictConfig]:
    """Check the command line's cells; raise a :class:`~cbmir.errors.CbmirError` on the first user error.

    Returns the configs checked (none when Hydra is only asked to print something).
    """
    from cbmir.cell.spec import build_spec

    line = parse_command_line(args)
    if line.inspect:
        return []
    where = {"config_name": line.config_name, "config_dir": line.config_dir}
    if line.multirun:
        variants = each_value(sweep_axes(line.overrides, **where))
    else:
        swept = [key for key, values in sweep_axes(line.overrides).items() if len(values) > 1]
        if swept and not any(o.startswith("experiment=") for o in line.overrides):
            raise ConfigError(f"{swept[0]} lists several values: add -m to sweep them")
        variants = [line.overrides]
    checked = []
    for overrides in variants:
        cfg = compose(overrides, **where)
        check_launch(cfg, line.multirun)
        try:
            build_spec(cfg)
        except InvalidCellError:
            if not line.multirun:
                raise  # a sweep skips such a combination and says so in its summary
        checked.append(cfg)
    return checked
