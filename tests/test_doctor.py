"""cbmir.doctor: a bare offline machine cannot run (and is told what is missing); a prepared one can."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import constants

from cbmir import doctor


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache


def test_sweep_syntax_expands_to_cells():
    cells = doctor.expand(["-m", "model=resnet50,vgg19", "size=28,64", "dataset=bloodmnist"])
    assert cells == [
        ["model=resnet50", "size=28", "dataset=bloodmnist"],
        ["model=resnet50", "size=64", "dataset=bloodmnist"],
        ["model=vgg19", "size=28", "dataset=bloodmnist"],
        ["model=vgg19", "size=64", "dataset=bloodmnist"],
    ]
    paper = doctor.expand(["experiment=paper", "size=28"])  # the command line overrides the experiment's axis
    assert len(paper) == 9 * 8 and all("size=28" in cell for cell in paper)


def test_bare_offline_machine_cannot_run(empty_hub_cache, tmp_path, capsys):
    out = tmp_path / "out"
    code = doctor.main(["model=resnet50,uni", "dataset=bloodmnist", "size=28,64", f"paths.output_dir={out}"])
    text = capsys.readouterr().out
    assert code == 1
    assert "4 cell(s) to run" in text
    assert "resnet50: not in the local hub cache" in text and "hub timm/resnet50.tv_in1k" in text
    assert "uni: not in the local hub cache" in text and "gated, no token" in text
    assert "licence CC-BY-NC-ND-4.0" in text
    assert "bloodmnist.npz is missing" in text and "bloodmnist_64.npz is missing" in text
    assert "hub reachability and access (HF_HUB_OFFLINE=1)" in text  # said, not silently skipped
    assert "verdict: CANNOT RUN" in text and "after requesting access and setting HF_TOKEN" in text


def test_prepared_machine_can_run(empty_hub_cache, data_dir, tmp_path, capsys):
    weights = tmp_path / "resnet50.safetensors"
    weights.write_bytes(b"weights")
    snapshot = empty_hub_cache / "models--timm--vgg19.tv_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"cached weights")
    (empty_hub_cache / "models--timm--vgg19.tv_in1k" / "refs").mkdir()
    (empty_hub_cache / "models--timm--vgg19.tv_in1k" / "refs" / "main").write_text("abc123")
    own_data = tmp_path / "data"
    own_data.mkdir()
    shutil.copy(data_dir / "bloodmnist.npz", own_data)
    base = [f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={own_data}", "dataset=bloodmnist"]
    code = doctor.main([*base, f"model.weights={weights}", "dataset.verify_md5=false"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"resnet50: local weights {weights}" in text and "verdict: ready to run" in text
    assert "MD5 not checked: dataset.verify_md5=false" in text
    code = doctor.main([*base, "model=vgg19", "dataset.verify_md5=false"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "vgg19: cached (model.safetensors)" in text and "licence BSD-3-Clause" in text
    # the official MD5 is checked when asked: the tiny fixture is not the official file
    code = doctor.main([*base, "model=vgg19"])
    text = capsys.readouterr().out
    assert code == 1 and "does not match the official MD5" in text


def test_too_little_disk_is_a_blocker(empty_hub_cache, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(doctor, "free_bytes", lambda path: 10)
    code = doctor.main(
        [
            f"paths.output_dir={tmp_path}",
            f"paths.data_dir={data_dir}",
            "model.pretrained=false",
            "dataset.verify_md5=false",
        ]
    )
    text = capsys.readouterr().out
    assert code == 1 and "FAIL" in text.split("disk")[1] and "or set paths.output_dir elsewhere" in text


def test_token_is_never_printed(empty_hub_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "NeverPrintMe0123456789abcdef")
    doctor.main(["model=uni", f"paths.output_dir={tmp_path}"])
    text = capsys.readouterr().out
    assert "token set" in text and "NeverPrintMe" not in text
