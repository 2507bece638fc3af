"""The text protocols as cells: text → image and zero-shot, with a tiny open_clip model and its real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from cbmir.cell.run import run_cell
from cbmir.data import dataset_facts
from cbmir.errors import ConfigError
from cbmir.metrics.per_query import read_per_query
from cbmir.models.text import NoTextTowerError, load_text_tower
from tests.cell.test_cell import CONTRACT_KEYS
from tests.helpers.config import base_overrides
from tests.helpers.text_fixtures import TINY_CLIP, TINY_CLIP_OVERRIDES, tiny_clip_registered


@pytest.fixture
def text_cfg(compose, data_dir, tmp_path):
    """Cells of the tiny CLIP, both towers from one seeded weights file (as a released checkpoint)."""
    import open_clip
    import torch

    def _cfg(*extra: str):
        over = [*TINY_CLIP_OVERRIDES, f"model.weights={weights}"]
        return compose(base_overrides(data_dir, tmp_path / "out", tiny=False) + over + list(extra))

    with tiny_clip_registered(), torch.random.fork_rng():
        torch.manual_seed(3)
        weights = tmp_path / "open_clip_model.bin"
        torch.save(open_clip.create_model(TINY_CLIP, pretrained=None).state_dict(), weights)
        yield _cfg


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def class_queries(cfg, names: list[str], template: str = "a photo of a CLASSNAME.") -> np.ndarray:
    """The class ensembles computed here, from the text tower alone (one template: the prompt's own embedding)."""
    return load_text_tower(cfg.model).encode([template.replace("CLASSNAME", n) for n in names])


def test_text_to_image_cell(text_cfg):
    cfg = text_cfg("protocol=text", "dataset=bloodmnist")
    result = run_cell(cfg)
    names = [dataset_facts(cfg.dataset).class_names[str(i)] for i in range(8)]
    assert CONTRACT_KEYS <= set(result) and result["protocol"] == "text" and result["n_queries"] == 8
    assert result["prompts"] == {"templates": ["a photo of a CLASSNAME."], "classnames": [[n] for n in names]}
    assert result["intervals"]["MAP@R"]["over"] == "database items"
    # R-precision of every class query, recomputed from the cached joint-space images and the text tower alone
    db = np.load(result["embeddings"]["database"])
    labels = np.load(cfg.paths.data_dir + "/bloodmnist.npz")["train_labels"][:, 0]
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1, rtol=1e-5)  # text.image: normalize=true
    sims = class_queries(cfg, names).astype(np.float64) @ unit(db.astype(np.float64)).T
    expected = []
    for c in range(8):
        r = int((labels == c).sum())
        top = np.argsort(-sims[c], kind="stable")[:r]
        expected.append(100 * (labels[top] == c).mean() if r else 0.0)
    scores, query_index, label = read_per_query(cfg.paths.output_dir + "/results/text/bloodmnist/28/tiny_clip")
    np.testing.assert_allclose(scores["R-precision"], expected, atol=1e-9)
    assert set(scores) == {"MAP@R", "R-precision", "P@5", "nDCG@5", "mAP@5"}
    np.testing.assert_array_equal(label[:, 0], np.arange(8))
    with np.load(cfg.paths.output_dir + "/results/text/bloodmnist/28/tiny_clip/per_query.npz") as f:
        assert f["prompt:MAP@R"].shape == (8, 1)  # one template: its query is the ensemble itself
        np.testing.assert_allclose(f["prompt:MAP@R"][:, 0], scores["MAP@R"], atol=1e-9)


def test_zeroshot_cell_pairs_with_image_knn_on_the_same_queries(text_cfg):
    cfg = text_cfg("protocol=zeroshot", "dataset=bloodmnist")
    result = run_cell(cfg)
    assert result["protocol"] == "zeroshot" and set(result["metrics"]) >= {"ACC@1", "ACC@3", "ACC@5", "ACC@1_macro"}
    names = [dataset_facts(cfg.dataset).class_names[str(i)] for i in range(8)]
    queries = np.load(result["embeddings"]["query"])
    labels = np.load(cfg.paths.data_dir + "/bloodmnist.npz")["test_labels"][:, 0]
    predicted = np.argmax(queries @ class_queries(cfg, names).T, axis=1)
    zs, zs_index, zs_label = read_per_query(cfg.paths.output_dir + "/results/zeroshot/bloodmnist/28/tiny_clip")
    np.testing.assert_array_equal(zs["ACC@1"], 100.0 * (predicted == labels))
    knn_cfg = text_cfg("protocol=standard", "dataset=bloodmnist")
    knn = run_cell(knn_cfg)
    assert knn["embeddings"]["query"] != result["embeddings"]["query"]  # study and joint-space images: two entries
    assert not np.allclose(np.linalg.norm(np.load(knn["embeddings"]["query"]), axis=1), 1)
    kn, kn_index, kn_label = read_per_query(cfg.paths.output_dir + "/results/standard/bloodmnist/28/tiny_clip")
    assert set(zs) & set(kn) >= {"ACC@1", "ACC@3", "ACC@5"}  # same names on the same queries: paired tests apply
    np.testing.assert_array_equal(zs_index, kn_index)
    np.testing.assert_array_equal(zs_label, kn_label)


def test_prompts_from_the_command_line_are_used_and_recorded(text_cfg):
    names = "[a, b, c, d, e, f, g, [h, eta]]"
    cfg = text_cfg(
        "protocol=zeroshot", "dataset=bloodmnist", "prompts.templates=[CLASSNAME cells.]", f"prompts.classnames={names}"
    )
    result = run_cell(cfg)
    assert result["prompts"]["templates"] == ["CLASSNAME cells."]
    assert result["prompts"]["classnames"][-1] == ["h", "eta"] and result["prompts"]["classnames"][0] == ["a"]
    with pytest.raises(ConfigError, match="has no CLASSNAME placeholder"):
        run_cell(text_cfg("protocol=text", "dataset=bloodmnist", "prompts.templates=[a photo.]", "overwrite=true"))
    with pytest.raises(ConfigError, match=r"needs one entry per class \(8\)"):
        run_cell(text_cfg("protocol=text", "dataset=bloodmnist", "prompts.classnames=[a, b]", "overwrite=true"))


def test_a_model_without_text_tower_is_refused_before_anything_is_built(cell_cfg):
    with pytest.raises(NoTextTowerError, match=r"^model tiny_resnet has no text tower in cbmir; protocol=text needs"):
        run_cell(cell_cfg("protocol=text"))


def test_a_concatenated_volume_is_refused_for_text(text_cfg):
    with pytest.raises(ConfigError, match="use dataset.aggregate=mean or max"):
        run_cell(text_cfg("protocol=zeroshot", "dataset=adrenalmnist3d"))


@pytest.mark.slow  # CONCH's full image tower at 448 px on 2 CPU cores
def test_conch_cells_run_from_a_released_layout_file(compose, tmp_path):
    """Both text protocols with CONCH: seeded visual.* in the released layout (tests/golden/conch_keys.json) plus a
    small seeded text tower (model.text.arch) and a CONCH-layout tokenizer file beside the weights. Seven images:
    the full image tower costs ~1 s per image here, and the cell's plumbing is the subject."""
    import json

    import torch

    from tests.helpers.config import GOLDEN
    from tests.helpers.golden_recipe import recipe
    from tests.helpers.medmnist_fixtures import write_medmnist

    data_dir = tmp_path / "medmnist"
    write_medmnist(data_dir, "breastmnist", 28, n_classes=2, n={"train": 4, "val": 1, "test": 3}, seed=1)
    from tests.helpers.text_fixtures import conch_layout_tokenizer
    from tests.models.test_text_towers import TINY, seeded_reference

    sd = recipe().seeded_state_dict(json.loads((GOLDEN / "conch_keys.json").read_text()))
    sd |= {f"text.{k}": v for k, v in seeded_reference(dim=512).state_dict().items()}  # CONCH's joint width
    torch.save(sd, tmp_path / "pytorch_model.bin")
    conch_layout_tokenizer(tmp_path / "conch_byte_level_bpe_uncased.json")
    arch = ",".join(f"{k}:{v}" for k, v in {**TINY, "dim": 512}.items())
    over = ["model=conch", f"model.weights={tmp_path / 'pytorch_model.bin'}", f"+model.text.arch={{{arch}}}"]
    for protocol in ("text", "zeroshot"):
        cfg = compose(base_overrides(data_dir, tmp_path / "out", tiny=False) + over + [f"protocol={protocol}", "k=3"])
        result = run_cell(cfg)
        assert result["text_tower"]["tokenizer"] == "conch_byte_level_bpe_uncased.json"
        queries = 2 if protocol == "text" else len(np.load(f"{data_dir}/breastmnist.npz")["test_labels"])
        assert len(result["prompts"]["templates"]) == 22 and result["n_queries"] == queries
        assert result["cached"] == {"database": protocol == "zeroshot", "query": protocol == "zeroshot"}
        assert result["config"]["model"]["proj_contrast"] is False  # the study's config; the joint tower is built
