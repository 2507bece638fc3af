"""The bench's printed product: one table of every figure, each with its [min-max] over the repeats."""

from __future__ import annotations

from typing import Any

from cbmir.bench.common import median

LAYOUT = {"contiguous": "NCHW", "channels_last": "NHWC", "strided": "strided"}


def fmt_range(lo_hi: list[float], digits: int = 1) -> str:
    return f"[{lo_hi[0]:.{digits}f}-{lo_hi[1]:.{digits}f}]"


def settings_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{'setting (backbone input layout)':<36} {'batch':>5} {'imgs':>5}  {'pipeline img/s':>22} "
        f"{'model img/s':>22} {'conventional img/s':>22}  {'efficiency':>16} {'vs conv.':>16}"
    ]
    for s in result["settings"]:
        ips, sp = s["images_per_s"], s["images_per_s_spread"]
        cell = {k: f"{ips[k]:.1f} {fmt_range(sp[k])}" for k in ips}
        name = f"{s['setting']} ({LAYOUT.get(s['backbone_input_memory_format'], '?')})"
        lines.append(
            f"{name:<36} {s['batch_size']:>5} {s['images_per_run']:>5}  {cell['pipeline']:>22} {cell['model']:>22} "
            f"{cell['conventional']:>22}  {s['pipeline_efficiency']:.3f} "
            f"{fmt_range(s['pipeline_efficiency_spread'], 2):>10} {s['speedup_vs_conventional']:.3f} "
            f"{fmt_range(s['speedup_vs_conventional_spread'], 2):>10}"
        )
    return lines


def section_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    if v := result.get("volume_3d"):
        sps = v["slices_per_s"]
        lines.append(
            f"3D ({v['volumes']} volumes x {v['side']} slices; one-slice loop timed on "
            f"{v['per_slice_volumes_timed']}): "
            f"batched {sps['batched']:.1f} slices/s, one slice per forward {sps['one_slice_per_forward']:.1f} slices/s "
            f"-> {v['speedup_3d_batched']:.2f}x {fmt_range(v['speedup_spread'], 2)}"
        )
    if s := result.get("search"):
        lines.append(
            f"search ({s['database']} x {s['queries']} x {s['dim']}{', scaled down' if s['scaled_down'] else ''}; "
            f"loop timed on {s['loop_queries_timed']} queries): FAISS {median(s['seconds_faiss']):.2f} s, loop "
            f"{median(s['seconds_loop_extrapolated']):.1f} s -> {s['speedup_search']:.1f}x "
            f"{fmt_range(s['speedup_spread'], 1)}; PathMNIST estimate: FAISS {s['pathmnist_faiss_estimate_s']:.0f} s "
            f"vs loop {s['pathmnist_loop_estimate_s'] / 60:.0f} min"
        )
    if c := result.get("cache"):
        lines.append(
            f"cache ({c['database']} + {c['queries']} images): cold cell {median(c['seconds_cold']):.2f} s, cached "
            f"{median(c['seconds_cached']):.2f} s -> {c['cache_speedup']:.1f}x {fmt_range(c['speedup_spread'], 1)}"
        )
    if m := result.get("memory"):
        mp, fp = m["model_phase"], m["full_split_phase"]
        lines.append(
            f"memory ({m['images']} x {m['shape'][1]}x{m['shape'][2]}x3 = {m['split_gb']:.1f} GB memory-mapped, "
            f"batch {m['batch_size']}, {m['num_workers']} workers): peak RSS {m['peak_rss_gb']:.2f} GB (ru_maxrss, "
            f"main process; {m['baseline_rss_gb']:.2f} GB before the run); {m['model']} batches: all processes "
            f"{mp['peak_total_pss_gb']:.2f} GB PSS ({mp['peak_total_pss_anon_gb']:.2f} anon); whole split, stand-in "
            f"backbone: {fp['peak_total_pss_gb']:.2f} GB PSS ({fp['peak_total_pss_anon_gb']:.2f} anon, "
            f"{fp['peak_total_pss_file_gb']:.2f} page cache); PathMNIST search phase "
            f"~{m['pathmnist_search_phase_estimate_gb']:.1f} GB more"
        )
    return lines


def table(result: dict[str, Any]) -> str:
    def verdict(t: dict[str, Any]) -> str:
        return "skipped" if t["holds"] is None else "ok" if t["holds"] else "MISSED"

    load = result["load_average_start"][0], result["load_average_end"][0]
    lines = [
        f"cbmir bench ({result['profile']}) · {result['device_name']} · device {result['device']} · "
        f"{result['threads']} threads · precision {result['precision']} · {result['num_workers']} workers · "
        f"{result['weights']} weights",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"medians of {result['repeats']} repeats after {result['warmup']} warm-up; [min-max] over repeats; "
        f"load average {load[0]:.1f} -> {load[1]:.1f}",
        "",
        *settings_lines(result),
        *section_lines(result),
        "",
        "targets: "
        + "; ".join(
            f"{k} {t['value']:.2f} {fmt_range(t['spread'], 2) if t['spread'] else ''} {t['target']} {verdict(t)}"
            for k, t in result["targets"].items()
        ),
        f"total {result['seconds_total']:.0f} s",
    ]
    return "\n".join(lines)
