"""workloads.downstream and orchestrator.training.trial_eval: what the scores are measured on, and with what."""
import pytest
import torch
from conftest import SAMPLE
from torch import nn

from orchestrator.config.schema import SSLabConfig
from orchestrator.training.evaluate_checkpoint import evaluate_checkpoint
from orchestrator.training.trial_eval import (
    VAL_METRICS,
    Splits,
    check_pruning_objective,
    knn_top1,
    make_augment,
    random_init_knn,
    val_metrics,
)
from workloads.augment import SimCLRAugment
from workloads.checkpoint import save_encoder
from workloads.data import CIFAR10, Normalization, load_images, split_three_ways
from workloads.downstream import (
    downstream_scores,
    linear_top1,
    representation_scores,
)
from workloads.evaluate import alignment, knn_accuracy, uniformity
from workloads.evaluate.features import extract_features
from workloads.evaluate.linear_probe import fit_linear_probe
from workloads.models import build_backbone

STILL = dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)  # views = the image


class Pooled(nn.Module):
    """A parameter-free encoder: 2x2 average-pooled pixels."""

    feature_dim = 12

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


@pytest.fixture(scope="module")
def sample_splits() -> Splits:
    data = load_images(SAMPLE)
    keep = torch.arange(len(data))[data.labels < 4]  # 2,000 images of 4 classes keep the tests quick
    data = data.subset(keep)
    train, val, test = (data.subset(i) for i in split_three_ways(data.labels, 0.2, 0.1, seed=0))
    return Splits(train, val, test, Normalization.of_images(train.images))


def test_uniformity_is_the_mean_of_the_two_views_and_the_configured_augmentation_makes_them(sample_splits):
    norm, images = sample_splits.normalization, sample_splits.val.images[:300]
    augment = SimCLRAugment(32, mean=norm.mean, std=norm.std)
    scores = representation_scores(Pooled(), images, norm, augment, seed=5)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        view1, view2 = augment(images)
    z1, z2 = (nn.functional.normalize(Pooled()(v), dim=1) for v in (view1, view2))
    per_view = float((uniformity(z1) + uniformity(z2)) / 2)
    assert scores["repr/uniformity"] == pytest.approx(per_view, abs=1e-6)
    assert abs(per_view - float(uniformity(torch.cat([z1, z2])))) > 1e-3  # pooled views differ: positives counted
    assert scores["repr/alignment"] == pytest.approx(float(alignment(z1, z2)), abs=1e-6)
    # the augmentation given is the one used: views that equal the image are perfectly aligned
    still = representation_scores(Pooled(), images, norm, SimCLRAugment(32, **STILL, mean=norm.mean, std=norm.std))
    assert still["repr/alignment"] == pytest.approx(0.0, abs=1e-10) and scores["repr/alignment"] > 0.01
    with pytest.raises(ValueError, match="the augmentation normalises with mean"):
        representation_scores(Pooled(), images, norm, SimCLRAugment(32))  # CIFAR-10's constants, not the data's


def test_downstream_scores_fit_on_train_and_score_val_and_the_held_out_test(sample_splits):
    train, val, test, norm = sample_splits
    scores, val_features = downstream_scores(Pooled(), train, val, norm, knn_k=20, held_out=test, seed=0)
    assert set(scores) == {"downstream/knn_top1", "downstream/linear_top1", "test/knn_top1", "test/linear_top1",
                           "repr/alignment", "repr/uniformity"}
    feats = {name: extract_features(Pooled(), split.images, norm) for name, split in
             (("train", train), ("val", val), ("test", test))}
    assert torch.equal(val_features, feats["val"])
    for prefix, name, split in (("downstream", "val", val), ("test", "test", test)):
        assert scores[f"{prefix}/knn_top1"] == knn_accuracy(feats["train"], train.labels, feats[name], split.labels, k=20)
    probe = fit_linear_probe(feats["train"], train.labels, seed=0, num_classes=train.num_classes)
    assert scores["downstream/linear_top1"] == probe.accuracy(feats["val"], val.labels)
    assert scores["test/linear_top1"] == probe.accuracy(feats["test"], test.labels)
    assert scores["downstream/linear_top1"] == linear_top1(Pooled(), train, val, norm)
    without_test, _ = downstream_scores(Pooled(), train, val, norm, knn_k=20, linear_probe=False)
    assert not any(k.startswith("test/") for k in without_test) and "downstream/linear_top1" not in without_test
    assert without_test["downstream/knn_top1"] == scores["downstream/knn_top1"]


def _config(**sections) -> SSLabConfig:
    return SSLabConfig.model_validate({"name": "t", "data": {"uri": SAMPLE}, "eval": {"knn_k": 20}, **sections})


def test_val_metrics_measure_the_objective_on_the_validation_split(sample_splits):
    train, val, test, norm = sample_splits
    config = _config(augment={"crop_scale": [0.5, 1.0], "jitter_p": 0.3})
    encoder = Pooled()
    assert val_metrics(config, encoder, sample_splits, "downstream/knn_top1", "cpu") == {
        "downstream/knn_top1": knn_top1(config, encoder, train, val, norm, "cpu")}
    assert val_metrics(config, encoder, sample_splits, "downstream/linear_top1", "cpu") == {
        "downstream/linear_top1": linear_top1(encoder, train, val, norm, "cpu", config.seed)}
    augment = make_augment(config, norm)
    assert (augment.crop_scale, augment.jitter_p, augment.mean) == ((0.5, 1.0), 0.3, norm.mean)
    expected = representation_scores(encoder, val.images, norm, augment, "cpu", config.seed)
    assert val_metrics(config, encoder, sample_splits, "repr/alignment", "cpu") == expected
    assert random_init_knn(config, encoder, sample_splits, "cpu") == {
        "downstream/random_init/knn_top1": knn_top1(config, encoder, train, val, norm, "cpu")}
    with pytest.raises(ValueError, match="is not measured on the validation split"):
        val_metrics(config, encoder, sample_splits, "downstream/segmentation/miou", "cpu")


def test_the_pruner_takes_only_objectives_it_can_have_every_epoch():
    for objective in VAL_METRICS + ("train/loss", "bank/occupancy"):
        check_pruning_objective(objective)
    for objective in ("downstream/random_init/knn_top1", "downstream/seg/miou", "repr/other"):
        with pytest.raises(ValueError, match="has no per-epoch value for the pruner"):
            check_pruning_objective(objective)


def test_sslab_eval_normalises_as_the_encoder_was_trained(tmp_path):
    """encoder.pt keeps the training split's normalisation and augmentation; sslab eval uses them
    (and the CIFAR-10 constants only for a checkpoint written before it kept them)."""
    torch.manual_seed(0)
    backbone = build_backbone("small_convnet", width=4).eval()
    norm = Normalization((0.3, 0.4, 0.5), (0.2, 0.25, 0.3))
    augment = {"crop_scale": [0.6, 1.0], "flip_p": 0.5, "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_p": 0.0,
               "grayscale_p": 0.0, "blur_p": 0.0}
    base = {"image_size": 32, "eval": {"knn_k": 20, "knn_temperature": 0.1}, "seed": 0}
    save_encoder(str(tmp_path / "new.pt"), backbone, "small_convnet", {"width": 4},
                 {**base, "normalization": norm.as_dict(), "augment": augment})
    save_encoder(str(tmp_path / "old.pt"), backbone, "small_convnet", {"width": 4}, base)
    train_uri = f"{SAMPLE}#split=val&val_fraction=0.1&seed=0"
    test_uri = f"{SAMPLE}#split=test&val_fraction=0.1&test_fraction=0.05&seed=0"
    train, test = load_images(train_uri), load_images(test_uri)
    found = {}
    for path, expected_norm, expected_augment in (("new.pt", norm, augment), ("old.pt", CIFAR10, {})):
        found[path] = evaluate_checkpoint(str(tmp_path / path), train_uri, test_uri, linear_probe=False)
        views = SimCLRAugment(32, **expected_augment, mean=expected_norm.mean, std=expected_norm.std)
        expected, _ = downstream_scores(backbone, train, test, expected_norm, views, knn_k=20, linear_probe=False)
        assert found[path] == pytest.approx(expected, abs=1e-9)
    assert found["new.pt"]["repr/uniformity"] != pytest.approx(found["old.pt"]["repr/uniformity"], abs=1e-6)
