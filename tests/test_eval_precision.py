"""Frozen features in the run's precision and layout (issue 15): bf16 autocast and NHWC input for the
final evaluation and the pruner's validation, eval.precision, and its record for `sslab eval`."""
import copy

import pytest
import torch

pytest.register_assert_rewrite("bad_input_helpers")  # its assertions explain themselves too
from bad_input_helpers import assert_no_work, assert_says, fails  # noqa: E402
from conftest import ROOT, SAMPLE  # noqa: E402

from orchestrator.config.schema import SSLabConfig  # noqa: E402
from orchestrator.tracking.record import reported_params  # noqa: E402
from orchestrator.training.evaluate_checkpoint import evaluate_checkpoint  # noqa: E402
from orchestrator.training.trial_eval import (  # noqa: E402
    Splits,
    eval_precision,
    knn_top1,
    precision_record,
    val_metrics,
)
from workloads.checkpoint import save_encoder  # noqa: E402
from workloads.data import Normalization, load_images, split_three_ways, using_normalization  # noqa: E402
from workloads.downstream import downstream_scores, representation_scores  # noqa: E402
from workloads.evaluate import knn_accuracy  # noqa: E402
from workloads.evaluate.features import extract_features  # noqa: E402
from workloads.evaluate.precision import FP32, FeaturePrecision  # noqa: E402
from workloads.models import build_backbone  # noqa: E402

pytest_plugins = ["bad_input_helpers"]  # the bad-input catalogue's project fixture and checks

BF16_FEATURE_TOLERANCE = 0.02  # relative L2 error of a row: bf16 keeps 8 mantissa bits (~0.4% an op)
BF16_KNN_MARGIN = 0.02  # top-1 (kNN, linear) of bf16 features within 2 points of fp32's (2,000 images, 4 classes)


@pytest.fixture(scope="module")
def splits() -> Splits:
    data = load_images(SAMPLE)
    data = data.subset(torch.arange(len(data))[data.labels < 4])  # 2,000 images of 4 classes: quick
    train, val, test = (data.subset(i) for i in split_three_ways(data.labels, 0.2, 0.1, seed=0))
    return Splits(train, val, test, Normalization.of_images(train.images))


@pytest.fixture(scope="module")
def backbone(splits) -> torch.nn.Module:
    """A small ConvNet with BatchNorm statistics measured on the training split (an encoder's scale)."""
    torch.manual_seed(0)
    net = build_backbone("small_convnet", width=8)
    with torch.no_grad():
        net.train()(splits.normalization.normalize(splits.train.images[:512].float() / 255))
    return net.eval()


def _before(backbone, images, normalization, batch_size=512):
    """extract_features as it was before eval.precision (fp32 NCHW), to check the default is unchanged."""
    backbone.eval()
    with torch.no_grad(), using_normalization(normalization):
        return torch.cat([backbone(normalization.normalize(images[i : i + batch_size].float().div_(255.0))).float()
                          for i in range(0, len(images), batch_size)])


def test_the_default_is_bit_identical_to_fp32_nchw(splits, backbone):
    images, norm = splits.val.images, splits.normalization
    assert torch.equal(extract_features(backbone, images, norm), _before(backbone, images, norm))
    assert torch.equal(extract_features(backbone, images, norm, precision="fp32", channels_last=False),
                       _before(backbone, images, norm))
    # on the CPU 'auto' is fp32, as train.precision's
    assert torch.equal(extract_features(backbone, images, norm, precision="auto"), _before(backbone, images, norm))


def test_bf16_features_agree_with_fp32_and_knn_within_a_margin(splits, backbone):
    train, val, _, norm = splits
    fp32 = [extract_features(backbone, s.images, norm) for s in (train, val)]
    bf16 = [extract_features(backbone, s.images, norm, precision="bf16") for s in (train, val)]
    assert all(f.dtype == torch.float32 and f.device.type == "cpu" for f in bf16)
    for exact, low in zip(fp32, bf16):
        relative = (low - exact).norm(dim=1) / exact.norm(dim=1)
        assert 0 < relative.max() < BF16_FEATURE_TOLERANCE, float(relative.max())  # > 0: bf16 did run
    exact_knn = knn_accuracy(fp32[0], train.labels, fp32[1], val.labels, k=20)
    low_knn = knn_accuracy(bf16[0], train.labels, bf16[1], val.labels, k=20)
    assert exact_knn > 0.4  # the features carry the classes: the margin below means something
    assert abs(low_knn - exact_knn) <= BF16_KNN_MARGIN, (low_knn, exact_knn)


def test_channels_last_features_equal_nchw_ones_and_the_model_is_not_changed(splits, backbone):
    images, norm = splits.val.images, splits.normalization
    nhwc = copy.deepcopy(backbone).to(memory_format=torch.channels_last)  # as training converts it
    before = {k: (v.clone(), v.stride()) for k, v in nhwc.state_dict().items()}
    exact = extract_features(backbone, images, norm)
    torch.testing.assert_close(extract_features(nhwc, images, norm, channels_last=True), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(extract_features(backbone, images, norm, channels_last=True), exact, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, before[k][0]) and v.stride() == before[k][1] for k, v in nhwc.state_dict().items())
    assert not nhwc.training  # eval mode as it came
    # repr/*: the views go in NHWC too (downstream._features)
    fp32_repr = representation_scores(backbone, images[:200], norm, seed=3)
    nhwc_repr = representation_scores(nhwc, images[:200], norm, seed=3, channels_last=True)
    assert nhwc_repr == pytest.approx(fp32_repr, abs=1e-5)


def test_downstream_scores_in_bf16_are_close_and_the_default_is_unchanged(splits, backbone):
    train, val, test, norm = splits
    exact, exact_val = downstream_scores(backbone, train, val, norm, knn_k=20, held_out=test)
    again, again_val = downstream_scores(backbone, train, val, norm, knn_k=20, held_out=test, precision="fp32",
                                         channels_last=False)
    assert again == exact and torch.equal(again_val, exact_val)
    low, _ = downstream_scores(backbone, train, val, norm, knn_k=20, held_out=test, precision="bf16")
    for key in ("downstream/knn_top1", "downstream/linear_top1", "test/knn_top1", "test/linear_top1"):
        assert abs(low[key] - exact[key]) <= BF16_KNN_MARGIN, (key, low[key], exact[key])
    assert low["repr/alignment"] == pytest.approx(exact["repr/alignment"], rel=0.01)
    assert low["repr/uniformity"] == pytest.approx(exact["repr/uniformity"], rel=0.01)


def _config(**sections) -> SSLabConfig:
    return SSLabConfig.model_validate({"name": "t", "data": {"uri": SAMPLE}, "eval": {"knn_k": 20}, **sections})


def test_eval_precision_follows_training_unless_fp32_is_asked():
    assert eval_precision(_config(), "cpu") == FP32  # auto on the CPU: fp32, NCHW
    assert eval_precision(_config(), "cuda") == FeaturePrecision("bf16", True)  # auto on CUDA: bf16, NHWC
    fast = {"train": {"precision": "bf16", "channels_last": True}}
    assert eval_precision(_config(**fast), "cpu") == FeaturePrecision("bf16", True)
    assert eval_precision(_config(**fast, eval={"precision": "fp32"}), "cpu") == FP32
    assert eval_precision(_config(eval={"precision": "fp32"}), "cuda") == FP32
    record = precision_record(FeaturePrecision("bf16", True))
    assert {p.key: p.value for p in reported_params(record)} == {"scores_precision": "bf16",
                                                                 "scores_channels_last": "True"}


def test_the_pruners_metrics_use_the_precision_given(splits, backbone):
    config = _config()
    scoring = FeaturePrecision("bf16", False)
    assert val_metrics(config, backbone, splits, "downstream/knn_top1", "cpu", scoring) == {
        "downstream/knn_top1": knn_top1(config, backbone, splits.train, splits.val, splits.normalization, "cpu", scoring)}
    low = val_metrics(config, backbone, splits, "repr/alignment", "cpu", scoring)
    exact = val_metrics(config, backbone, splits, "repr/alignment", "cpu")  # the default: exact fp32
    assert low != exact and low == pytest.approx(exact, rel=0.01)


def test_a_bad_eval_precision_is_refused_before_any_work(project, capsys):
    message = fails(capsys, "train", project({"eval": {"precision": "bf8"}}))
    assert_says(message, "eval.precision: Input should be 'train' or 'fp32'", "(got 'bf8')")
    assert_no_work(project.dir)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        extract_features(torch.nn.Identity(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
                         Normalization((0.5,) * 3, (0.5,) * 3), precision="fp16")


def test_sslab_eval_computes_the_scores_as_the_run_recorded(tmp_path, backbone, splits):
    """encoder.pt records how its run's scores were computed; sslab eval computes them so by default,
    fp32 NCHW for a checkpoint written before the record, and --precision chooses."""
    norm = splits.normalization
    base = {"image_size": 32, "eval": {"knn_k": 20, "knn_temperature": 0.1}, "seed": 0, "normalization": norm.as_dict()}
    save_encoder(str(tmp_path / "bf16.pt"), backbone, "small_convnet", {"width": 8},
                 {**base, "eval_precision": FeaturePrecision("bf16", True)._asdict()})
    save_encoder(str(tmp_path / "old.pt"), backbone, "small_convnet", {"width": 8}, base)
    train_uri = f"{SAMPLE}#split=val&val_fraction=0.1&seed=0"
    test_uri = f"{SAMPLE}#split=test&val_fraction=0.1&test_fraction=0.05&seed=0"
    train, test = load_images(train_uri), load_images(test_uri)
    nhwc = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
    as_run, _ = downstream_scores(nhwc, train, test, norm, knn_k=20, linear_probe=False, precision="bf16",
                                  channels_last=True)
    exact, _ = downstream_scores(backbone, train, test, norm, knn_k=20, linear_probe=False)
    assert as_run["repr/alignment"] != pytest.approx(exact["repr/alignment"], abs=1e-7)  # the two differ
    scores = {(name, precision): evaluate_checkpoint(str(tmp_path / name), train_uri, test_uri, linear_probe=False,
                                                     precision=precision)
              for name, precision in (("bf16.pt", "recorded"), ("bf16.pt", "fp32"), ("old.pt", "recorded"))}
    assert scores["bf16.pt", "recorded"] == pytest.approx(as_run, abs=1e-9)
    assert scores["bf16.pt", "fp32"] == pytest.approx(exact, abs=1e-9)
    assert scores["old.pt", "recorded"] == pytest.approx(exact, abs=1e-9)
    with pytest.raises(ValueError, match="precision must be one of recorded, fp32, bf16"):
        evaluate_checkpoint(str(tmp_path / "old.pt"), train_uri, test_uri, precision="fp16")


@pytest.mark.slow
def test_a_bf16_channels_last_run_records_its_precision_and_sslab_eval_reproduces_it(ray_local, small_data):
    """End to end on the CPU fast path: the run scores in bf16 + NHWC (eval.precision: train), says so in
    its params and encoder.pt, and sslab eval recomputes the same numbers from the checkpoint."""
    from mlflow.tracking import MlflowClient

    from orchestrator.config.loader import load_config
    from orchestrator.training.run import run_training
    from workloads.checkpoint import load_encoder

    config = load_config(f"{ROOT}/examples/quickstart.yaml", [
        "name=bf16eval", "train.epochs=1", "train.batch_size=128", "model.width=8", "eval.knn_k=20",
        "eval.embedding_map_points=200", "train.progress=false", "data.val_fraction=0.1",
        "train.precision=bf16", "train.channels_last=true"])
    result = run_training(config)
    client = MlflowClient(config.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.params["eval.precision"], run.data.params["scores_precision"],
            run.data.params["scores_channels_last"]) == ("train", "bf16", "True")
    local = client.download_artifacts(result.run_id, "encoder.pt", str(small_data))
    assert load_encoder(local)[1]["eval_precision"] == {"precision": "bf16", "channels_last": True}
    sample = "examples/data/cifar10_sample.parquet"
    split = "val_fraction=0.1&test_fraction=0.1&seed=0"
    scores = evaluate_checkpoint(local, f"{sample}#split=train&{split}", f"{sample}#split=val&{split}")
    for name in ("downstream/knn_top1", "downstream/linear_top1", "repr/alignment", "repr/uniformity"):
        assert scores[name] == pytest.approx(run.data.metrics[name], abs=1e-6), name
