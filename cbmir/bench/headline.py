"""bench.json's headline: each ratio with its interval, and every target judged per setting by its interval."""

from __future__ import annotations

from typing import Any

from cbmir.bench.profiles import TARGETS
from cbmir.bench.rounds import judge

#: Ratio keys and where they live (None: in every extraction setting).
RATIO_SECTIONS = {
    "pipeline_efficiency": None,
    "speedup_vs_conventional": None,
    "speedup_3d_batched": "volume_3d",
    "speedup_search": "search",
    "cache_speedup": "cache",
}


def combine(verdicts: list[str]) -> str:
    """One verdict over settings: missed if any is, met if all are, else not resolved."""
    if not verdicts:
        return "skipped"
    if "missed" in verdicts:
        return "missed"
    return "met" if all(v == "met" for v in verdicts) else "not resolved"


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """Top-level ``X`` and ``X_ci`` (the first setting's for the extraction ratios), ``targets`` judged per setting,
    ``stable`` and every instability reason, named by section."""
    out: dict[str, Any] = {}
    for key, section in RATIO_SECTIONS.items():
        parts = result["settings"][:1] if section is None else [result[section]] if section in result else []
        out[key] = parts[0][key] if parts else None
        out[f"{key}_ci"] = parts[0][f"{key}_ci"] if parts else None
    targets = {}
    for key, target in TARGETS.items():
        section = RATIO_SECTIONS[key]
        named = (
            [(s["setting"], s) for s in result["settings"]]
            if section is None
            else [(section, result[section])]
            if section in result
            else []
        )
        per = {
            name: {
                "value": s[key],
                "ci": s[f"{key}_ci"],
                "verdict": judge(s[f"{key}_ci"], target),
                "stable": s["stable"],
            }
            for name, s in named
        }
        targets[key] = {
            "target": f">= {target:g}",
            "settings": per,
            "verdict": combine([v["verdict"] for v in per.values()]),
            "stable": all(v["stable"] for v in per.values()),
        }
    if "serve" in result:
        for key, t in result["serve"]["targets"].items():
            targets[f"serve.{key}"] = t
    reasons = [f"{s['setting']}: {r}" for s in result["settings"] for r in s["unstable_reasons"]] + [
        f"{name}: {r}"
        for name in ("volume_3d", "search", "cache")
        if name in result
        for r in result[name]["unstable_reasons"]
    ]
    return {**out, "targets": targets, "stable": not reasons, "unstable_reasons": reasons}
