"""Pretext workload configs and every example's task without Ray: a step, and the encoder checkpoint
round trip for each encoder wrapper (plain backbone, lightness-in, split-brain halves). The Ray Train
path, MLflow record and `sslab eval` of a pretext run are checked by the grid sweep in test_sweep.py."""
import pytest
from conftest import ROOT

from orchestrator.config.loader import ConfigError, load_config


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

    from orchestrator.training.learners import (
        backbone_kwargs,
        build_learner,
        encoder_of,
    )
    from workloads.checkpoint import load_encoder, save_encoder
    from workloads.data import load_images
    from workloads.pretext.registry import encoder_spec
    from workloads.training.pretext_loop import pretext_train_epoch

    monkeypatch.chdir(ROOT)
    config = load_config(f"examples/{kind}.yaml", ["model.width=4"])
    torch.manual_seed(0)
    images = load_images(config.data.uri).images[:64]
    task, _ = build_learner(config, None, num_images=64)
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
