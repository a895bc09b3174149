"""Pretext workloads through the same Ray Train path, MLflow record and downstream evaluation as the
contrastive one; one kind per encoder wrapper (plain backbone, lightness-in, split-brain halves)."""
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config_loader import ConfigError, load_config
from orchestrator.evaluate_checkpoint import evaluate_checkpoint
from orchestrator.train_run import run_training

from conftest import ROOT

TINY = ["train.epochs=2", "model.width=8", "eval.knn_k=20", "eval.embedding_map_points=100", "train.progress=false",
        "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "resources.cpus_per_worker=1"]
# through Ray: one kind (the pretext path is the same for all; every kind's task and encoder rebuild,
# wrappers included, are checked without Ray below)
WRAPPED = {"rotation": "pretext/accuracy"}


@pytest.mark.parametrize("kind", sorted(WRAPPED))
def test_pretext_run_records_its_metric_figure_and_an_encoder_that_sslab_eval_rebuilds(ray_local, workdir, kind):
    config = load_config(f"{ROOT}/examples/{kind}.yaml", TINY + [f"name=tiny_{kind}"])
    result = run_training(config)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["workload"] == kind
    assert [m.step for m in client.get_metric_history(result.run_id, WRAPPED[kind])] == [0, 1]
    assert {"encoder.pt", "embedding_map.png", f"{kind}.png"} <= {a.path for a in client.list_artifacts(result.run_id)}
    knn = run.data.metrics["downstream/knn_top1"]
    assert 0.0 <= knn <= 1.0

    local = client.download_artifacts(result.run_id, "encoder.pt", str(workdir))
    sample = "examples/data/cifar10_sample.parquet"
    scores = evaluate_checkpoint(local, f"{sample}#split=train&val_fraction=0.1&seed=0",
                                 f"{sample}#split=val&val_fraction=0.1&seed=0", linear_probe=False)
    assert scores["downstream/knn_top1"] == pytest.approx(knn, abs=1e-9)


def test_a_key_of_another_workload_kind_is_refused_with_the_kind_and_its_keys(workdir):
    with pytest.raises(ConfigError, match=r"workload.temperature: unknown key for workload kind 'rotation'; valid keys: hidden"):
        load_config(f"{ROOT}/examples/rotation.yaml", ["workload.temperature=0.2"])
    with pytest.raises(ConfigError, match=r"workload.kind must be one of: contrastive, rotation"):
        load_config(f"{ROOT}/examples/rotation.yaml", ["workload.kind=rotate"])


def test_a_sweep_space_key_must_belong_to_the_workload_kind(workdir):
    import json

    search = {"n_trials": 2, "space": {"workload.temperature": {"type": "float", "low": 0.1, "high": 1.0}}}
    with pytest.raises(ConfigError, match=r"search.space.workload.temperature: not a hyperparameter of workload kind 'rotation'"):
        load_config(f"{ROOT}/examples/rotation.yaml", [f"search={json.dumps(search)}"])


@pytest.mark.parametrize("kind", ["rotation", "exemplar", "relative_position", "jigsaw", "colorization", "denoising",
                                  "context_encoder", "split_brain"])
def test_each_example_builds_trains_a_step_and_its_encoder_checkpoint_round_trips(kind, tmp_path, monkeypatch):
    """Without Ray: the example's task from its config, one epoch of 2 steps, then encoder.pt rebuilt."""
    import torch

    from orchestrator.learners import backbone_kwargs, build_learner, encoder_of
    from workloads.checkpoint import load_encoder, save_encoder
    from workloads.data import load_images
    from workloads.pretext.registry import encoder_spec
    from workloads.pretext_train_loop import pretext_train_epoch

    monkeypatch.chdir(ROOT)
    config = load_config(f"examples/{kind}.yaml", ["model.width=4"])
    torch.manual_seed(0)
    images = load_images(config.data.uri).images[:64]
    task, _, _ = build_learner(config, None, num_images=64)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    stats, metrics = pretext_train_epoch(task, optimizer, None, images, torch.arange(64), 32, torch.device("cpu"))
    assert stats.steps == 2 and torch.isfinite(torch.tensor(stats.loss)) and metrics
    encoder = encoder_of(task).eval()
    path = str(tmp_path / "encoder.pt")
    save_encoder(path, encoder, config.model.backbone, backbone_kwargs(config), {"encoder_wrapper": encoder_spec(kind)})
    rebuilt, _ = load_encoder(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), encoder(x))
