"""Own data through whole cells: in-process (cache keyed by content, exclude_same_group) and the command line."""

import csv

import numpy as np
import pytest
from PIL import Image

from cbmir.cell.run import run_cell
from cbmir.errors import ConfigError
from cbmir.layout import cell_dir
from tests.helpers.config import TINY_CNN
from tests.helpers.own_fixtures import write_tree


def own_overrides(out, *extra):
    return [
        f"paths.output_dir={out}",
        "model.pretrained=false",
        "num_workers=0",
        "batch_size=8",
        "logger=csv",
        "dataset.workers=1",
        *TINY_CNN,
        *extra,
    ]


def test_folder_cell_caches_by_content_and_excludes_the_query_patient(compose, tmp_path):
    root = write_tree(tmp_path / "tree", patients=5, per_patient=3)
    base = own_overrides(tmp_path / "out", "dataset=folder", f"dataset.root={root}", "dataset.name=tumours")
    cfg = compose(base + ["protocol.exclude_same_group=true", "k=4"])
    result = run_cell(cfg)
    assert result["protocol"] == "paper+exclude-group" and result["dataset"] == "tumours"
    out = cell_dir(cfg)
    neighbors = np.load(out / "neighbors.npy")
    groups = {}
    for role in ("database", "query"):
        with open(result["sources"][role], newline="") as fh:
            groups[role] = np.array([r["group"] for r in csv.DictReader(fh)])
    assert neighbors.shape == (result["n_queries"], 4)
    assert not (groups["database"][neighbors] == groups["query"][:, None]).any()
    assert (out / "gallery.png").exists() and result["skipped_files"] == []

    # the embedding cache is keyed by the ingested content: unchanged files reuse it (under any protocol), a
    # changed file does not
    assert result["cached"] == {"database": False, "query": False}
    again = run_cell(compose(base + ["overwrite=true"]))
    assert again["cached"] == {"database": True, "query": True}
    with open(again["sources"]["query"], newline="") as fh:
        changed = root / next(csv.DictReader(fh))["source"]
    Image.fromarray(np.zeros((18, 24), np.uint8)).save(changed)
    assert run_cell(compose(base + ["overwrite=true"]))["cached"] == {"database": False, "query": False}


def test_exclude_same_group_needs_own_data(cell_cfg):
    with pytest.raises(ConfigError, match="exclude_same_group needs groups"):
        run_cell(cell_cfg("protocol.exclude_same_group=true"))


def test_folder_and_manifest_cells_from_their_overrides(compose, tmp_path, capsys):
    """The overrides a user types, through the whole cell (in-process: the command line's exit statuses for
    errors raised inside a cell are tested once, in tests/launch/test_run.py)."""
    from cbmir.errors import DataError
    from cbmir.launch.run import main

    root = write_tree(tmp_path / "tree", patients=4)
    out = tmp_path / "out"
    result = run_cell(compose(own_overrides(out, "dataset=folder", f"dataset.root={root}", "dataset.name=tumours",
                                            "size=32")))  # fmt: skip
    assert result["n_database"] + result["n_queries"] == 24 and "mAP@5" in result["metrics"]
    assert (out / "results/paper/tumours/32/tiny_resnet/result.json").is_file()

    lines = ["path,label,group,split"]
    for i, png in enumerate(sorted(root.rglob("*.png"))):
        rel = png.relative_to(root).as_posix()
        lines.append(f"{rel},{png.parts[-3]},{png.parent.name},{'test' if i % 4 == 0 else 'train'}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    result = run_cell(
        compose(own_overrides(out, "dataset=manifest", f"dataset.path={root / 'list.csv'}", "dataset.name=listed"))
    )
    assert (result["n_database"], result["n_queries"]) == (18, 6)
    assert result["sources"]["query"].endswith("test_metadata.csv")

    (root / "benign" / "be0" / "0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="benign/be0/0.png: not a readable image"):
        run_cell(compose(own_overrides(out, "dataset=folder", f"dataset.root={root}", "dataset.name=tumours",
                                       "overwrite=true")))  # fmt: skip
    with pytest.raises(SystemExit) as stopped:  # preflight, before torch: one sentence, exit status 2
        main(own_overrides(out, "dataset=folder", f"dataset.root={root}"))
    assert stopped.value.code == 2
    assert "needs a name" in capsys.readouterr().err
