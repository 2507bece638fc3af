"""The command line as users run it: one cell, a sweep, clean errors, and multi-process extraction.

Each test starts ``python -m cbmir.run`` (or torchrun) in a fresh process: marked slow, skipped by ``make test-fast``.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.config import base_overrides, run_cli


def results(out: Path) -> dict[tuple, dict]:
    found = {}
    for path in (out / "results").rglob("result.json"):
        r = json.loads(path.read_text())
        found[(r["protocol"], r["dataset"], r["size"], r["model"])] = r
    return found


@pytest.mark.slow
def test_one_cell_on_the_command_line_is_skipped_once_finished(basic_sweep_2x2, data_dir):
    """A cell the shared 2x2 sweep computed, asked for again alone: skipped, and it says so (the sweep itself shows
    the command line computing cells)."""
    out, sweep = basic_sweep_2x2
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    r = results(out)[("paper", "bloodmnist", 64, "tiny_resnet")]
    assert (r["dataset"], r["size"], r["n_database"]) == ("bloodmnist", 64, 24)
    assert sweep.stdout.count("mAP@5") == 4  # one summary line per cell
    again = run_cli(*base_overrides(data_dir, out), "dataset=bloodmnist", "size=64")
    assert again.returncode == 0 and "finished already" in again.stdout
    assert "mAP@5" not in again.stdout  # nothing recomputed


@pytest.mark.slow
def test_two_by_two_multirun(basic_sweep_2x2):
    out, proc = basic_sweep_2x2  # dataset=breastmnist,bloodmnist size=28,64 (shared with test_cluster.py)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(results(out)) == {
        ("paper", d, s, "tiny_resnet") for d in ("breastmnist", "bloodmnist") for s in (28, 64)
    }
    assert "sweep: 4 cells ok, 0 skipped, 0 failed" in proc.stdout


@pytest.mark.slow
def test_sweep_keeps_going_past_a_failed_cell_and_exits_nonzero(data_dir, tmp_path):
    out = tmp_path / "out"
    # dermamnist has no local file and downloads are off: that cell fails, the other runs
    proc = run_cli("-m", *base_overrides(data_dir, out), "dataset=dermamnist,breastmnist")
    assert proc.returncode == 1
    assert set(results(out)) == {("paper", "breastmnist", 28, "tiny_resnet")}
    assert "FAILED  paper/dermamnist/28/tiny_resnet" in proc.stdout


@pytest.mark.slow
def test_bad_size_is_one_clear_message(data_dir, tmp_path):
    proc = run_cli(*base_overrides(data_dir, tmp_path / "out"), "size=100")
    assert proc.returncode == 2
    assert "cbmir: error: dataset breastmnist has sizes [28, 64, 128, 224]; size=100" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "cache").exists()


@pytest.mark.slow
def test_unknown_key_is_rejected(data_dir, tmp_path):
    proc = run_cli(*base_overrides(data_dir, tmp_path / "out"), "bacth_size=4")
    assert proc.returncode != 0 and "bacth_size" in proc.stderr
    proc = run_cli(*base_overrides(data_dir, tmp_path / "out"), "model=resnet5")
    assert proc.returncode != 0 and "resnet5" in proc.stderr


@pytest.mark.slow
def test_ddp_sweep_without_torchrun_is_refused(data_dir, tmp_path):
    proc = run_cli(
        "-m", *base_overrides(data_dir, tmp_path / "out"), "trainer=ddp", "trainer.accelerator=cpu", "size=28,64"
    )
    # found before the sweep starts (and before torch is imported): one message, exit status 2
    assert proc.returncode == 2 and "must be launched by torchrun" in proc.stderr


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(data_dir, tmp_path):
    """The documented launch: torchrun starts the processes, Lightning only joins them (gloo on CPU)."""
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]
    single_out, ddp_out = tmp_path / "single", tmp_path / "ddp"
    common = ["dataset=bloodmnist,adrenalmnist3d", "batch_size=5"]  # 5 does not divide 24, 12 or 6
    single = run_cli("-m", *base_overrides(data_dir, single_out), *common)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli(
        "-m",
        *base_overrides(data_dir, ddp_out),
        *common,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        launcher=torchrun,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # status lines come from rank 0 only: one result line per cell, one summary
    assert ddp.stdout.count("mAP@5") == 2 and ddp.stdout.count("sweep: 2 cells ok") == 1, ddp.stdout[-3000:]
    a, b = results(single_out), results(ddp_out)
    assert set(a) == set(b) and len(a) == 2
    for key in a:
        assert b[key]["world_size"] == 2 and a[key]["world_size"] == 1
        assert a[key]["metrics"] == b[key]["metrics"]
        for role in ("database", "query"):
            np.testing.assert_allclose(
                np.load(a[key]["embeddings"][role]), np.load(b[key]["embeddings"][role]), rtol=1e-5, atol=1e-6
            )
        cell = Path(key[0], key[1], str(key[2]), key[3])
        np.testing.assert_array_equal(
            np.load(single_out / "results" / cell / "neighbors.npy"),
            np.load(ddp_out / "results" / cell / "neighbors.npy"),
        )


@pytest.mark.slow
def test_3d_size_validation_in_a_run_and_in_a_sweep(data_dir, tmp_path):
    out = tmp_path / "out"
    single = run_cli(*base_overrides(data_dir, out), "dataset=adrenalmnist3d", "size=224")
    assert single.returncode == 2 and "adrenalmnist3d has sizes [28, 64]" in single.stderr
    sweep = run_cli(
        "-m", *base_overrides(data_dir, out), "dataset=bloodmnist,adrenalmnist3d", "size=28,128", "batch_size=4"
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert set(results(out)) == {
        ("paper", "bloodmnist", 28, "tiny_resnet"),
        ("paper", "bloodmnist", 128, "tiny_resnet"),
        ("paper", "adrenalmnist3d", 28, "tiny_resnet"),
    }
    assert "sweep: 3 cells ok, 1 skipped, 0 failed" in sweep.stdout
    assert "skipped paper/adrenalmnist3d/128/tiny_resnet: dataset adrenalmnist3d has sizes [28, 64]" in sweep.stdout


def test_the_paper_experiment_sweeps_the_whole_study():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tests.helpers.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["experiment=paper"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    models, datasets, sizes = (params[k].split(",") for k in ("model", "dataset", "size"))
    assert len(models) == 9 and len(datasets) == 8 and sizes == ["28", "64", "128", "224"]
    for model in models:
        assert (CONF_DIR / "model" / f"{model}.yaml").exists(), model
    for dataset in datasets:
        assert (CONF_DIR / "dataset" / f"{dataset}.yaml").exists(), dataset
    assert cfg.protocol.name == "paper"
