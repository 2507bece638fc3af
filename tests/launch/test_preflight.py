"""User errors on the command line are found before lightning or torch is imported: one sentence, exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cbmir.errors import ConfigError, InvalidCellError
from cbmir.launch.preflight import each_value, parse_command_line, preflight, sweep_axes


@pytest.mark.parametrize(
    "args,message",
    [
        (["model=nope"], "model=nope: no such config; one of: biomedclip, conch"),
        (["model=any_timm"], "model=any_timm was renamed: use model=timm"),
        (["model=any_open_clip"], "model=any_open_clip was renamed: use model=open_clip"),
        (["dataset=bloodmnistt"], "dataset=bloodmnistt: no such config"),
        (["modle=uni"], "Could not override 'modle'"),
        (["batch_size=0"], "batch_size must be a positive integer, got 0"),
        (["protocol.metric=manhattan"], "protocol.metric must be one of ['l2', 'cosine']"),
        (["model=resnet50,vgg19"], "model lists several values: add -m to sweep them"),
        (["-m", "model=resnet50,nope"], "model=nope: no such config"),
        (["-m", "size=28,64", "k=0"], "k=0 must be an integer between 1 and the database size"),
        (["protocol=zeroshot", "model=resnet50"], "model resnet50 has no text tower in cbmir"),
        (
            ["protocol=zeroshot", "model=conch", "protocol.top_k=[0]"],
            "protocol.top_k must be a list of positive integers",
        ),
        (["decode.max_pixels=0"], "decode.max_pixels must be a positive whole number of pixels, got 0"),
    ],
)
def test_user_errors_are_one_sentence(args, message):
    with pytest.raises(ConfigError) as caught:
        preflight(args)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value) and "HYDRA_FULL_ERROR" not in str(caught.value)


def test_a_size_the_dataset_lacks_fails_a_cell_but_not_a_sweep():
    with pytest.raises(InvalidCellError, match="size=33 is not one of them"):
        preflight(["size=33"])
    checked = preflight(["-m", "dataset=breastmnist,adrenalmnist3d", "size=28,128"])  # 3D has no 128: skipped later
    assert len(checked) == 3


def test_a_sweep_is_checked_axis_by_axis_not_cell_by_cell():
    axes = sweep_axes(["model=resnet50,vgg19,densenet121", "size=28,64", "k=5"])
    assert axes == {
        "model": ["model=resnet50", "model=vgg19", "model=densenet121"],
        "size": ["size=28", "size=64"],
        "k": ["k=5"],
    }
    assert each_value(axes) == [
        ["model=resnet50", "size=28", "k=5"],
        ["model=vgg19", "size=28", "k=5"],
        ["model=densenet121", "size=28", "k=5"],
        ["model=resnet50", "size=64", "k=5"],
    ]
    paper = sweep_axes(["experiment=paper"])  # the study's own sweep: 9 models, 8 datasets, sizes
    assert len(paper["model"]) == 9 and len(each_value(paper)) < 30


def test_flags_are_hydras_and_inspection_is_left_to_it(tmp_path):
    line = parse_command_line(["-m", "--config-dir", str(tmp_path), "-cn", "mine", "model=uni", "size=64"])
    assert line.multirun and line.config_dir == tmp_path and line.config_name == "mine"
    assert line.overrides == ["model=uni", "size=64"]
    assert preflight(["--cfg", "job", "model=nope"]) == []  # Hydra prints (and reports) it itself


def test_a_users_config_folder_is_searched(tmp_path):
    """``--config-dir`` adds a folder of the user's own configs beside the package's, without copying ours."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_resnet.yaml").write_text("defaults:\n  - resnet50\n  - _self_\nname: my_resnet\n")
    checked = preflight(["--config-dir", str(tmp_path), "model=my_resnet"])
    assert checked[0].model.name == "my_resnet" and checked[0].model.family == "timm_cnn"


@pytest.mark.slow
def test_the_command_fails_fast_without_importing_torch(tmp_path):
    code = (
        "import sys\nfrom cbmir.launch.run import main\n"
        "try:\n    main(['model=uni', 'size=33'])\nexcept SystemExit as exc:\n    status = exc.code\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\nsys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "cbmir: error: dataset breastmnist has sizes [28, 64, 128, 224]; size=33 is not one of them"
    )
