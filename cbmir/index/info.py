"""``cbmir index info DIR``: the generations (counts, dates, changes), privacy, header scan and search kind."""

from __future__ import annotations

import json
from pathlib import Path

from cbmir.errors import CbmirError
from cbmir.index.files import read_manifest
from cbmir.index.generations import current_name, generations, resolve
from cbmir.index.phi import describe


def generation_rows(root: Path) -> list[dict]:
    """One row per complete generation: name, items, created/changed, last change; current marked."""
    current = current_name(root)
    rows = []
    for name in generations(root):
        try:
            m = read_manifest(root / name)
        except CbmirError as exc:
            rows.append({"generation": name, "current": name == current, "error": str(exc)})
            continue
        last = (m.get("history") or [{}])[-1]
        rows.append(
            {
                "generation": name,
                "current": name == current,
                "items": m.get("n_items"),
                "splits": m.get("splits"),
                "written": m.get("changed") or m.get("created"),
                "change": f"{last.get('change', 'build')} of {last.get('items', m.get('n_items'))}",
            }
        )
    return rows


def info(folder: Path, *, as_json: bool = False) -> str:
    """Text (or JSON) about the index: its current manifest's essentials and every generation."""
    root = Path(folder).expanduser().resolve()
    manifest = read_manifest(resolve(root))
    rows = generation_rows(root)
    if as_json:
        return json.dumps({"manifest": manifest, "generations": rows}, indent=2)
    privacy = manifest.get("privacy") or {"mode": "plain"}
    lines = [
        f"index {root}: {manifest['model']} · {manifest['dataset']} · {manifest['size']} px · "
        f"{manifest['n_items']} items · metric {manifest['metric']} · {manifest['faiss']['index']}",
        f"privacy: {privacy['mode']}" + (f" (key id {privacy['key_id']})" if privacy.get("key_id") else ""),
        f"headers: {describe(manifest['headers'])}" if manifest.get("headers") else "headers: not scanned",
    ]
    if approx := manifest.get("approximate"):
        lines.append(
            f"approximate: recall@{approx['k']} against exact {approx['recall']:.3f} (measured {approx['measured']})"
            + (f"; {approx['advice']}" if approx.get("advice") else "")
        )
    if not rows:
        lines.append("generations: none (an index from before generations)")
    else:
        lines.append("generations:")
        for r in rows:
            mark = "*" if r["current"] else " "
            if "error" in r:
                lines.append(f" {mark} {r['generation']}  unreadable: {r['error']}")
            else:
                lines.append(f" {mark} {r['generation']}  {r['items']:>7} items  {r['written']}  {r['change']}")
    return "\n".join(lines)
