"""The bench's printed product: every figure with its 95 % interval, rounds and noise; unstable ones say why."""

from __future__ import annotations

from typing import Any

LAYOUT = {"contiguous": "NCHW", "channels_last": "NHWC", "strided": "strided"}


def ci(interval: list[float] | None, digits: int = 2) -> str:
    return f"[{interval[0]:.{digits}f}-{interval[1]:.{digits}f}]" if interval else "[no interval]"


def rate(section: dict[str, Any], path: str, digits: int = 1) -> str:
    return f"{section['rate_per_s'][path]:.{digits}f} {ci(section['rate_per_s_ci'][path], digits)}"


def ratio(section: dict[str, Any], key: str, unit: str = "") -> str:
    noise = section["noise"][key]
    return f"{section[key]:.3f}{unit} {ci(section[f'{key}_ci'])} (noise {noise:.1%})"


def settings_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{'setting (backbone input layout)':<34} {'batch':>5} {'imgs':>5} {'rounds':>6}  {'pipeline img/s':>20} "
        f"{'model img/s':>20} {'conventional img/s':>20}  {'efficiency':>30} {'vs conventional':>30}"
    ]
    for s in result["settings"]:
        name = f"{s['setting']} ({LAYOUT.get(s['backbone_input_memory_format'], '?')})"
        lines.append(
            f"{name:<34} {s['batch_size']:>5} {s['images_per_run']:>5} {s['rounds']:>6}  {rate(s, 'pipeline'):>20} "
            f"{rate(s, 'model'):>20} {rate(s, 'conventional'):>20}  {ratio(s, 'pipeline_efficiency'):>30} "
            f"{ratio(s, 'speedup_vs_conventional'):>30}"
        )
    return lines


def section_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    if v := result.get("volume_3d"):
        lines.append(
            f"3D ({v['volumes']} volumes x {v['side']} slices; loop timed on {v['per_slice_volumes_timed']}; "
            f"{v['rounds']} rounds): batched {rate(v, 'batched')} slices/s, one slice per forward "
            f"{rate(v, 'one_slice_per_forward')} slices/s -> {ratio(v, 'speedup_3d_batched', 'x')}"
        )
    if s := result.get("search"):
        lines.append(
            f"search ({s['database']} x {s['queries']} x {s['dim']}{', scaled down' if s['scaled_down'] else ''}; "
            f"loop timed on {s['loop_queries_timed']} queries; {s['rounds']} rounds): FAISS {rate(s, 'faiss')} q/s, "
            f"loop {rate(s, 'loop')} q/s -> {ratio(s, 'speedup_search', 'x')}; PathMNIST estimate: FAISS "
            f"{s['pathmnist_faiss_estimate_s']:.0f} s vs loop {s['pathmnist_loop_estimate_s'] / 60:.0f} min"
        )
    if c := result.get("cache"):
        lines.append(
            f"cache ({c['database']} + {c['queries']} images; {c['rounds']} rounds): cold cell "
            f"{1 / c['rate_per_s']['cold']:.2f} s, cached {1 / c['rate_per_s']['cached']:.2f} s -> "
            f"{ratio(c, 'cache_speedup', 'x')}"
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
    if v := result.get("serve"):
        lines.append(serve_line(v))
    return lines


def pct(d: dict[str, Any]) -> str:
    return f"p50 {d['p50']:.1f} {ci(d['p50_ci'], 1)} ms, p95 {d['p95']:.1f} {ci(d['p95_ci'], 1)} ms (n={d['n']})"


def serve_line(v: dict[str, Any]) -> str:
    parts, text = v["image_query_parts_ms"], v["text_query_ms"]
    words = f"absent ({text['absent']})" if text.get("p50") is None else pct(text)
    return (
        f"serve ({v['n_items']} items, real server on 127.0.0.1): image query {pct(v['image_query_ms'])}; "
        f"embed p50 {parts['embed']['p50']:.1f} ms, search p50 {parts['search']['p50']:.1f} ms, beyond embed "
        f"{pct(v['image_query_overhead_ms'])}; text query: {words}; "
        f"{v['concurrent_16_ms']['clients']} concurrent clients: {pct(v['concurrent_16_ms'])}"
    )


def target_lines(result: dict[str, Any]) -> list[str]:
    lines = ["targets (met: the interval clears the target; missed: wholly below; else not resolved):"]
    for key, t in result["targets"].items():
        if "settings" in t:
            # a verdict from an unstable section is never printed as a clean pass or miss
            per = "; ".join(
                f"{name} {ci(v['ci'])} {v['verdict']}{'' if v['stable'] else ', unstable'}"
                for name, v in t["settings"].items()
            )
            shaky = "" if t["stable"] else " (UNSTABLE: see below)"
            lines.append(f"  {key} {t['target']}: {t['verdict'].upper()}{shaky} ({per or 'skipped'})")
        else:
            lines.append(f"  {key} {t['target']}: {t['verdict'].upper()}")
    return lines


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = result["load_average_start"][0], result["load_average_end"][0]
    share = [d.get("other_cpu_share") for d in result["disturbance"].values() if d.get("other_cpu_share") is not None]
    lines = [
        f"cbmir bench ({result['profile']}) · {result['device_name']} · device {result['device']} · "
        f"{result['threads']} threads · precision {result['precision']} · {result['num_workers']} workers · "
        f"{result['weights']} weights · commit {m['commit']} · governor {m['governor']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"medians of paired rounds with 95 % intervals; load average {load[0]:.1f} -> {load[1]:.1f}; other "
        f"processes took up to {max(share, default=0):.0%} of the CPUs during a section",
        "",
        *settings_lines(result),
        *section_lines(result),
        "",
        *target_lines(result),
    ]
    if result["unstable_reasons"]:
        lines += ["UNSTABLE (read these figures as noise, not as a pass or a miss):"]
        lines += [f"  {r}" for r in result["unstable_reasons"]]
    else:
        lines.append("stable: every interval is within the wanted precision")
    lines.append(f"total {result['seconds_total']:.0f} s")
    return "\n".join(lines)
