"""train.max_minutes: the config key, the training loop's per-step stop, and the budget's clock."""
import time

import pytest
import torch
from pydantic import ValidationError

from orchestrator.config.schema import SSLabConfig
from orchestrator.training.budget import TrainingBudget
from workloads.augment import SimCLRAugment
from workloads.methods.contrastive import ContrastiveLearner
from workloads.models import ProjectionHead, build_backbone
from workloads.training.loop import train_epoch

DATA = {"uri": "examples/data/cifar10_sample.parquet"}


def test_max_minutes_is_optional_positive_and_not_for_video():
    assert SSLabConfig(name="a", data=DATA).train.max_minutes is None
    assert SSLabConfig(name="a", data=DATA, train={"max_minutes": 0.5}).train.max_minutes == 0.5
    with pytest.raises(ValidationError, match="max_minutes"):
        SSLabConfig(name="a", data=DATA, train={"max_minutes": 0})
    with pytest.raises(ValidationError, match="train.max_minutes is not supported by video workloads"):
        SSLabConfig(name="a", data={"uri": "synthetic:moving_objects"}, workload={"kind": "frame_order"},
                    train={"max_minutes": 1})


def test_train_epoch_ends_at_the_step_where_stop_says_so():
    torch.manual_seed(0)
    backbone = build_backbone("small_convnet", width=4)
    model = ContrastiveLearner(backbone, ProjectionHead(backbone.feature_dim, 16, 8), "nt_xent", 0.5, 1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    augment = SimCLRAugment(16, jitter_p=0.0, grayscale_p=0.0)
    asked = []
    stats = train_epoch(model, optimizer, None, images, torch.arange(64), augment, 8, torch.device("cpu"),
                        stop=lambda: asked.append(1) or len(asked) == 3)
    assert stats.steps == 3 and len(asked) == 3, "8 steps in the epoch; stopped after the third"
    assert stats.images_per_s > 0 and stats.loss > 0


def test_budget_is_reached_only_after_its_minutes():
    assert TrainingBudget(None, 1, torch.device("cpu")).stop is None, "no budget: the loop asks nothing"
    budget = TrainingBudget(0.002, 1, torch.device("cpu"))  # 0.12 s
    budget.start()
    assert not budget.reached()
    time.sleep(0.15)
    assert budget.reached() and budget.stop()
