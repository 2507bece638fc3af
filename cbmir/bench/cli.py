"""``python -m cbmir.bench``: parse the profile and flags, run every comparison, write bench.json, print the table."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import cbmir.bench as package
from cbmir.bench.cache import bench_cache
from cbmir.bench.common import Env, compose, gb
from cbmir.bench.headline import headline
from cbmir.bench.machine import Disturbance, machine
from cbmir.bench.memory import bench_memory
from cbmir.bench.pipeline import bench_setting
from cbmir.bench.profiles import PROFILES, Profile, parse_setting
from cbmir.bench.search import bench_search
from cbmir.bench.serve import bench_serve
from cbmir.bench.table import table
from cbmir.bench.volume3d import bench_3d
from cbmir.layout import CONF_DIR, versions
from cbmir.safety.files import atomic_write_json

log = logging.getLogger("cbmir.bench")


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def workers(text: str) -> str | int:
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--num-workers is auto or an integer >= 0, got {text!r}")
    return int(text)


#: A flag per profile field (``--max-batches`` for ``max_batches``): its type and help; unset = the profile's.
PROFILE_FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "warmup": (int, "untimed runs per method before timing"),
    "min_rounds": (int, "paired rounds at least (6 give a 95 %% interval)"),
    "max_rounds": (int, "paired rounds at most"),
    "budget_s": (float, "wall seconds of rounds per extraction setting"),
    "section_budget_s": (float, "wall seconds of rounds for the 3D, search and cache comparisons each"),
    "halfwidth": (float, "rounds stop once every interval's relative half-width is at most this (0.03)"),
    "seconds": (float, "target seconds of forward per timed run (sizes the runs)"),
    "min_batches": (int, "at least this many batches per timed run"),
    "max_batches": (int, "at most this many batches per timed run"),
    "volumes": (int, "3D: volumes"),
    "slice_volumes": (int, "3D: volumes the one-slice-per-forward loop is timed on, then scaled"),
    "search_shape": (ints, "search: N,Q,D database, queries, width (PathMNIST: 89996,7180,2048)"),
    "loop_queries": (int, "search: queries the per-query loop is timed on"),
    "cache_images": (ints, "cache: N,Q database and query images"),
    "rss_images": (int, "memory: images in the large split"),
    "rss_size": (int, "memory: their side"),
    "rss_model_batches": (int, "memory: batches through the real backbone"),
    "serve_items": (int, "serve: items of the synthetic index behind the server (quick 10,000, full 100,000)"),
    "serve_budget_s": (float, "serve: wall seconds of sequential, then of concurrent queries"),
    "serve_clients": (int, "serve: concurrent loopback clients"),
    "serve_client_queries": (int, "serve: queries per concurrent client per round"),
}


def parser() -> argparse.ArgumentParser:
    doc = package.__doc__ or ""
    p = argparse.ArgumentParser(
        prog="cbmir bench",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n", 1)[1],
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="full", help="the sizes of the run (default full)")
    p.add_argument("--quick", dest="profile", action="store_const", const="quick", help="= --profile quick")
    p.add_argument("--setting", action="append", type=parse_setting, metavar="MODEL,SOURCE,INPUT[,BATCH]")
    p.add_argument("--model", help="a conf/model name or timm=<arch> (default resnet50)")
    p.add_argument("--source-size", type=int, help="side of the synthetic source images (default 28)")
    p.add_argument("--input-size", nargs="+", help="network input side(s) or auto; several give several settings")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="a Hydra model override")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the config's; 16 above 64 px on CPU)")
    p.add_argument("--batches", type=int, help="batches per timed run (instead of sizing by --seconds)")
    p.add_argument("--max-forward-batch", type=int, help="3D: most slices per forward (default: the config's)")
    for name, (kind, text) in PROFILE_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{text} (default: the profile's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "32-true", "bf16-mixed", "16-mixed"))
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--num-workers", type=workers, help="loader workers (default: the config's num_workers, auto)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="pretrained", action="store_true", help="load the model's real weights")
    weights.add_argument("--random", dest="pretrained", action="store_false", help="random weights (default)")
    for section in ("3d", "search", "cache", "memory", "serve"):
        p.add_argument(f"--skip-{section}", action="store_true")
    p.add_argument("--serve-setting", type=parse_setting, metavar="MODEL,SOURCE,INPUT[,BATCH]",
                   help="serve: the model behind the server (default: the first setting); a vision-language model "
                   "(e.g. openclip,28,224) also gets text-query latency")  # fmt: skip
    p.add_argument("--rss-timeout", type=int, default=1800, help="memory: seconds the child process may take")
    p.add_argument("--output-dir", default="outputs", help="the bench writes <output-dir>/bench/bench.json")
    p.add_argument("--out", type=Path, help="the JSON file (default <output-dir>/bench/bench.json)")
    p.add_argument("--conf-dir", type=Path, default=CONF_DIR)
    p.add_argument("--tmp-dir", help="scratch folder for the synthetic files (default: the system's)")
    p.add_argument("--verbose", action="store_true", help="show Lightning's output")
    p.add_argument("--silent", action="store_true", help="print nothing but the table")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over the profile over conf/config.yaml; adds ``profile`` (a Profile), ``settings`` and resolved values."""
    from cbmir.cell.run import resolve_num_workers
    from cbmir.cell.spec import TrainerSpec

    p = parser()
    args = p.parse_args(argv)
    args.profile_name = args.profile
    chosen = {name: getattr(args, name) for name in PROFILE_FLAGS if getattr(args, name) is not None}
    profile: Profile = replace(PROFILES[args.profile], **chosen)
    try:
        profile.check()
    except ValueError as err:
        p.error(str(err))
    args.profile = profile

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.precision == "auto":
        args.precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    base = compose(args.conf_dir, [f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}"])
    args.config_batch_size = args.batch_size or int(base.batch_size)
    args.max_forward_batch = args.max_forward_batch or int(base.max_forward_batch)
    if args.num_workers is not None:
        base.num_workers = args.num_workers
    args.num_workers_config = base.num_workers
    placement = TrainerSpec(str(base.trainer.accelerator), base.trainer.devices, str(base.trainer.strategy), 1)
    args.num_workers = resolve_num_workers(base.num_workers, placement)  # the cells' own: 0 on CPU, min(8, CPUs) on GPU

    if args.setting:
        settings = list(args.setting)
    elif args.model or args.source_size or args.input_size:
        model, source = args.model or "resnet50", args.source_size or 28
        settings = [parse_setting(f"{model},{source},{i}") for i in args.input_size or ["auto"]]
    else:
        settings = [parse_setting(s) for s in profile.settings]
    args.settings = [replace(s, batch=s.batch or args.batch_size) for s in settings]
    args.out = args.out or Path(args.output_dir) / "bench" / "bench.json"
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every comparison the flags ask for, in one scratch folder; the result is bench.json's content."""
    profile = args.profile
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "num_workers": args.num_workers,
        "num_workers_config": args.num_workers_config,
        "precision": args.precision,
        "profile": args.profile_name,
        "quick": args.profile_name == "quick",
        "profile_sizes": dataclasses.asdict(profile),
        "warmup": profile.warmup,
        "machine": machine(),
        "weights": "pretrained" if args.pretrained else "random",
        "versions": versions(),
        "load_average_start": list(os.getloadavg()),
    }
    log.info(
        "[cbmir.bench] %s profile · %s · device %s · %d threads · precision %s · %d loader workers · "
        "paired rounds (%d-%d, %.0f s a setting) after %d warm-up",
        args.profile_name,
        result["device_name"],
        device,
        result["threads"],
        args.precision,
        args.num_workers,
        profile.min_rounds,
        profile.max_rounds,
        profile.budget_s,
        profile.warmup,
    )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cbmir-bench-", dir=args.tmp_dir) as tmp:
        env = Env(
            device,
            args.precision,
            args.num_workers,
            Path(tmp),
            args.conf_dir,
            args.pretrained,
            list(args.override),
            args.verbose,
        )
        primary = args.settings[0]
        batch = primary.batch or args.config_batch_size
        sections = result["section_seconds"] = {}
        disturbance = result["disturbance"] = {}

        def timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            with Disturbance() as d:
                out = fn()
            sections[name] = d.record["wall_s"]
            disturbance[name] = out["disturbance"] = d.record
            return out

        result["settings"] = [
            timed(
                s.label,
                lambda s=s: bench_setting(env, s, profile, config_batch=args.config_batch_size, batches=args.batches),
            )
            for s in args.settings
        ]
        if not args.skip_3d:
            result["volume_3d"] = timed(
                "3d",
                lambda: bench_3d(env, primary, profile, volume_batch=batch, max_forward_batch=args.max_forward_batch),
            )
        if not args.skip_search:
            result["search"] = timed("search", lambda: bench_search(profile))
        if not args.skip_cache:
            result["cache"] = timed("cache", lambda: bench_cache(env, primary, profile, batch=batch))
        if not args.skip_memory:
            result["memory"] = timed(
                "memory",
                lambda: bench_memory(
                    env, primary, profile, batch=batch, tmp_dir=args.tmp_dir, timeout=args.rss_timeout
                ),
            )
        if not args.skip_serve:
            result["serve"] = timed(
                "serve",
                lambda: bench_serve(
                    env, args.serve_setting or primary, profile, batch=batch, n_items=profile.serve_items
                ),
            )
    result.update(headline(result))
    result["peak_rss_gb"] = result["memory"]["peak_rss_gb"] if "memory" in result else float("nan")
    result["bench_process_peak_rss_gb"] = gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result["seconds_total"] = time.perf_counter() - t_start
    result["load_average_end"] = list(os.getloadavg())
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | int:
    """A bench run (returns bench.json's content), or ``compare OLD NEW`` (returns its exit status)."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["compare"]:
        from cbmir.bench.compare import main as compare_main

        return compare_main(argv[1:])
    args = parse_args(argv)
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.WARNING if args.silent else logging.INFO)
    result = run(args)
    requested = [dataclasses.asdict(s) for s in args.settings]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {**result, "settings_requested": requested})
    print(table(result))
    log.info("[cbmir.bench] wrote %s", args.out)
    return result
