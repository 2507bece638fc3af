"""Bench profiles and flags: the sizes come from PROFILES, a flag overrides one field, loader workers resolve
the way cells resolve them."""

from dataclasses import replace

import pytest

from cbmir.bench.cli import parse_args
from cbmir.bench.profiles import PROFILES, STUDY_SETTINGS, Setting, parse_setting
from cbmir.cell.run import resolve_num_workers
from cbmir.cell.spec import build_spec
from cbmir.errors import ConfigError


def test_profiles_resolve_from_data_and_flags_override_one_field():
    quick = parse_args(["--quick", "--device", "cpu"])
    assert quick.profile == PROFILES["quick"] and quick.profile_name == "quick"
    assert [s.model for s in quick.settings] == ["resnet50"]
    full = parse_args(["--device", "cpu"])
    assert full.profile == PROFILES["full"] and [s for s in full.settings] == [parse_setting(s) for s in STUDY_SETTINGS]
    tuned = parse_args(["--profile", "quick", "--device", "cpu", "--min-rounds", "9", "--search-shape", "10,2,8"])
    assert tuned.profile == replace(PROFILES["quick"], min_rounds=9, search_shape=(10, 2, 8))
    served = parse_args(["--quick", "--device", "cpu", "--serve-items", "20000", "--halfwidth", "0.05"])
    assert served.profile.serve_items == 20_000 and served.profile.halfwidth == 0.05
    # both profiles: paired rounds to +-3 %, at least 6 (a 95 % interval of a median), the serve section's sizes
    for p in (quick.profile, full.profile):
        assert p.min_rounds >= 6 and p.halfwidth == 0.03 and p.warmup >= 1 and p.serve_clients == 16
    assert quick.profile.serve_items >= 10_000 and full.profile.serve_items == 100_000
    assert full.config_batch_size == 64 and full.max_forward_batch == 512  # conf/config.yaml's
    assert str(full.out).endswith("outputs/bench/bench.json") and not full.pretrained


def test_bad_profile_sizes_are_refused():
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--device", "cpu", "--min-rounds", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--device", "cpu", "--min-rounds", "9", "--max-rounds", "8"])
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--device", "cpu", "--cache-images", "4,2,1"])
    with pytest.raises(ValueError, match="warm-up"):
        replace(PROFILES["quick"], warmup=-1).check()


def test_settings_parse_and_batch_flag_applies_to_each():
    assert parse_setting("resnet50,28,32") == Setting("resnet50", 28, 32, None)
    assert parse_setting("timm=vit_base_patch16_224,64,auto,16") == Setting("timm=vit_base_patch16_224", 64, None, 16)
    with pytest.raises(Exception, match="MODEL,SOURCE,INPUT"):
        parse_setting("resnet50,28")
    args = parse_args(["--model", "resnet50", "--input-size", "32", "224", "--device", "cpu", "--batch-size", "8"])
    assert args.settings == [Setting("resnet50", 28, 32, 8), Setting("resnet50", 28, 224, 8)]
    assert Setting("timm=vit_base_patch16_224", 64, 224).label == "vit_base_patch16_224 64->224"


def _workers(cfg) -> int:
    spec = build_spec(cfg)
    return resolve_num_workers(spec.num_workers, spec.trainer)


def test_num_workers_auto_is_zero_on_cpu_and_the_cpu_count_capped_at_8_on_gpu(compose, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert _workers(compose(["trainer=cpu"])) == 0  # conf/config.yaml: num_workers: auto
    assert _workers(compose(["trainer=gpu"])) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert _workers(compose(["trainer=gpu"])) == 2
    assert _workers(compose(["trainer=cpu", "num_workers=3"])) == 3
    # the bench resolves the same way, and an explicit count wins
    assert parse_args(["--quick", "--device", "cpu"]).num_workers == 0
    assert parse_args(["--quick", "--device", "cpu", "--num-workers", "2"]).num_workers == 2
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--device", "cpu", "--num-workers", "many"])


def test_num_workers_is_validated(cell_cfg):
    build_spec(cell_cfg("num_workers=auto"))
    build_spec(cell_cfg("num_workers=0"))
    for bad in ("num_workers=-1", "num_workers=many", "num_workers=1.5"):
        with pytest.raises(ConfigError, match="num_workers must be auto or a non-negative integer"):
            build_spec(cell_cfg(bad))
