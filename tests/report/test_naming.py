"""cbmir.report.naming: the paper's order and names come from the config tree (paper.yaml and the YAML labels)."""

from __future__ import annotations

from cbmir.layout import paper_grid
from cbmir.report.naming import dataset_label, dataset_order, metric_order, model_label, model_order, protocol_order


def test_labels_from_the_yamls_and_ids_otherwise():
    assert model_label("resnet50") == "ResNet50" and model_label("efficientnetv2_m") == "EfficientNetV2M"
    assert model_label("dinov2_s") == "dinov2_s"  # a model outside the study without a label keeps its id
    assert model_label("timm-resnet18") == "timm-resnet18"  # no YAML at all
    assert dataset_label("breastmnist") == "BreastMNIST"
    assert dataset_label("synapsemnist3d+tri-mean") == "SynapseMNIST3D+tri-mean"  # 3D options kept


def test_the_studys_order_first_then_the_others():
    grid = paper_grid()
    assert model_order(["zeta", "uni", "alpha", "vgg19"]) == ["vgg19", "uni", "alpha", "zeta"]
    assert model_order(reversed(grid["model"])) == grid["model"]
    assert dataset_order(["octmnist", "synapsemnist3d+tri", "synapsemnist3d", "breastmnist"]) == [
        "breastmnist",
        "synapsemnist3d",
        "synapsemnist3d+tri",
        "octmnist",
    ]
    assert protocol_order(["published", "standard", "paper+cosine", "paper"]) == [
        "paper",
        "paper+cosine",  # after its base protocol
        "standard",
        "published",
    ]
    assert metric_order(["P@5", "ACC@10", "ACC@1", "mMV@5", "mAP@10", "mAP@5"]) == [
        "mAP@5",
        "mAP@10",
        "mMV@5",
        "ACC@1",
        "ACC@10",
        "P@5",
    ]
