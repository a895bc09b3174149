"""The non-finite guard (issue 14): a nan/inf loss or gradient norm stops training at that step.

Unit level (workloads, no Ray): each of the three loops raises NonFiniteLossError at the step whose
loss became nan, before the optimizer steps (the parameters are exactly those after the step
before) and before the bank gets that step's keys; two gloo ranks stop at the same step even when
only one rank's loss is nan. End to end: `sslab train` with a diverging lr leaves a FAILED run whose
sslab.error is the message; a sweep prunes the diverging trial (search.prune_non_finite) and goes on.
"""
import json
import math
import pickle
import re

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT, free_port
from non_finite_ranks import NanAt, Recorder, parameters, rank_main
from torch import nn

from workloads.augment import SimCLRAugment
from workloads.bank import LocalBank
from workloads.errors import NonFiniteLossError
from workloads.methods.bank_objective import BankObjective
from workloads.methods.contrastive import ContrastiveLearner
from workloads.methods.momentum_contrast import MomentumKeyEncoder, QueryEncoder
from workloads.models import ProjectionHead, build_backbone
from workloads.models.backbones import SmallConvNet
from workloads.pretext.rotation import RotationPrediction
from workloads.training.bank_loop import train_epoch_with_bank
from workloads.training.finite import FiniteGuard
from workloads.training.loop import train_epoch
from workloads.training.pretext_loop import pretext_train_epoch

CPU = torch.device("cpu")
MESSAGE = re.compile(r"(loss|gradient norm) became (nan|inf|-inf) at epoch (\d+) step (\d+) "
                     r"\(lr ([^,]+), last finite loss ([^)]+)\)")


def assert_stopped_before_the_step(error, recorder: Recorder, modules, at: int, epoch: int, lr: float, what="loss"):
    """The message names the step; nothing stepped with it: the parameters are those after step at-1."""
    found = MESSAGE.fullmatch(str(error.value))
    assert found, str(error.value)
    assert found.group(1) == what and found.group(2) == "nan"
    assert (int(found.group(3)), int(found.group(4))) == (epoch, at) == (error.value.epoch, error.value.step)
    assert float(found.group(5)) == pytest.approx(lr, rel=1e-3)
    assert found.group(6) == f"{recorder.losses[-1]:.4g}"  # the last finite loss: step at-1's
    assert len(recorder.losses) == at  # on_step ran for the steps before, not for this one
    now = parameters(*modules)
    assert all(torch.isfinite(p).all() for p in now)
    assert all(torch.equal(a, b) for a, b in zip(now, recorder.params[-1]))


def test_the_in_batch_loop_stops_at_the_nan_step_before_the_optimizer_steps():
    torch.manual_seed(0)
    backbone = build_backbone("small_convnet", width=4)
    learner = ContrastiveLearner(backbone, ProjectionHead(backbone.feature_dim, 16, 8), "nt_xent", 0.5, 1.0)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    recorder = Recorder(learner)
    with pytest.raises(NonFiniteLossError) as error:
        train_epoch(learner, optimizer, None, images, torch.arange(32), NanAt(SimCLRAugment(16), at=2), 8, CPU,
                    "fp32", on_step=recorder, guard=FiniteGuard(epoch=3))
    assert_stopped_before_the_step(error, recorder, [learner], at=2, epoch=3, lr=0.05)


def test_the_bank_loop_stops_before_the_step_and_before_the_bank_gets_its_keys():
    """The nan is in the key encoder's view: the step's keys are nan, and never reach the bank."""
    torch.manual_seed(0)
    bank = LocalBank(size=64, dim=8, num_shards=2)
    backbone = build_backbone("small_convnet", width=4)
    encoder = QueryEncoder(backbone, ProjectionHead(backbone.feature_dim, 16, 8))
    keys = MomentumKeyEncoder(encoder, 0.9)
    objective = BankObjective(bank, "exact", "info_nce", temperature=0.2, margin=0.5, k=4, n=16)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.05)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    recorder = Recorder(encoder, keys.encoder)
    with pytest.raises(NonFiniteLossError) as error:
        train_epoch_with_bank(encoder, keys, objective, optimizer, None, images, torch.arange(32),
                              NanAt(SimCLRAugment(16), at=2, view=1), 8, CPU, first_step=0, on_step=recorder)
    assert_stopped_before_the_step(error, recorder, [encoder, keys.encoder], at=2, epoch=0, lr=0.05)
    pushed, ids = bank.keys(with_ids=True)
    assert bank.count == 16 and torch.isfinite(pushed).all()  # steps 0 and 1, 8 keys each
    assert sorted(ids.tolist()) == list(range(16))


def test_the_pretext_loop_stops_at_the_nan_step_before_the_optimizer_steps():
    torch.manual_seed(0)
    encoder = SmallConvNet(width=4)
    task = RotationPrediction(encoder, encoder.feature_dim, hidden=0)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    calls = []

    def nan_at_step_1(x):
        if len(calls) == 1:
            x = x.clone()
            x[3, 1, 5, 5] = float("nan")
        calls.append(1)
        return x

    recorder = Recorder(task)
    with pytest.raises(NonFiniteLossError) as error:
        pretext_train_epoch(task, optimizer, None, images, torch.arange(24), 8, CPU, "fp32", augment=nan_at_step_1,
                            on_step=recorder, guard=FiniteGuard(epoch=1))
    assert_stopped_before_the_step(error, recorder, [task], at=1, epoch=1, lr=1e-3)


def test_a_diverging_lr_stops_at_the_first_nan_with_the_lr_and_the_last_finite_loss():
    """No planted nan: AdamW at lr 1e30 sends the weights to ~1e30, and the next loss is not finite."""
    torch.manual_seed(0)
    backbone = build_backbone("small_convnet", width=4)
    learner = ContrastiveLearner(backbone, ProjectionHead(backbone.feature_dim, 16, 8), "nt_xent", 0.5, 1.0)
    optimizer = torch.optim.AdamW(learner.parameters(), lr=1e30)
    recorder = Recorder(learner)
    with pytest.raises(NonFiniteLossError) as error:
        train_epoch(learner, optimizer, None, torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8),
                    torch.arange(32), SimCLRAugment(16), 8, CPU, "fp32", on_step=recorder)
    found = MESSAGE.fullmatch(str(error.value))
    assert found and found.group(1) == "loss" and found.group(5) == "1e+30", str(error.value)
    step = int(found.group(4))
    assert 1 <= step < 4 and len(recorder.losses) == step and found.group(6) == f"{recorder.losses[-1]:.4g}"


def test_the_guard_names_a_non_finite_gradient_norm_and_keeps_the_last_finite_loss_across_epochs():
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    guard = FiniteGuard(epoch=0)
    loss = (weight * 2.0).sum()
    guard.backward(loss)
    assert guard.check(loss, optimizer, 0) == 6.0 and weight.grad.tolist() == [2.0, 2.0, 2.0]  # x 1.0: unchanged
    guard.epoch = 1
    weight.grad = None
    loss = (weight * 0.5).sum()
    guard.backward(loss)
    weight.grad[1] = math.inf  # a finite loss, an infinite gradient
    with pytest.raises(NonFiniteLossError) as error:
        guard.check(loss, optimizer, 0)
    assert str(error.value) == "gradient norm became inf at epoch 1 step 0 (lr 0.1, last finite loss 1.5)"
    fresh = FiniteGuard()
    loss = (weight * math.inf).sum()
    fresh.backward(loss)
    assert torch.isnan(weight.grad).all()  # a non-finite loss poisons every gradient (for DDP's all-reduce)
    with pytest.raises(NonFiniteLossError) as error:
        fresh.check(loss, optimizer, 0)
    assert str(error.value) == "loss became inf at epoch 0 step 0 (lr 0.1, last finite loss none)"
    error.value.run_id = "abc"
    copy = pickle.loads(pickle.dumps(error.value))  # it crosses process boundaries (Ray) whole
    assert (str(copy), copy.epoch, copy.step, copy.run_id) == (str(error.value), 0, 0, "abc")


# ---- two gloo ranks, only one of which sees the nan (tests/non_finite_ranks.py) -------------------

def test_two_ranks_stop_at_the_same_step_when_only_one_rank_sees_a_nan(tmp_path):
    """Without gather, rank 0's own loss stays finite: the nan reaches it only through DDP's all-reduce of
    the gradients (the guard turns rank 1's nan loss into nan gradients), so it stops at step 1 too,
    with "gradient norm became nan". With gather, rank 1's nan embeddings are in rank 0's loss. Neither
    rank steps the optimizer with it, and neither is left waiting."""
    context = mp.start_processes(rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=False)
    for _ in range(300):
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        raise AssertionError("the ranks did not finish within 300 s: one was left waiting")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert rank1[False][0].startswith("loss became nan at epoch 0 step 1 (lr 0.1, last finite loss ")
    assert rank0[False][0].startswith("gradient norm became nan at epoch 0 step 1 (lr 0.1, last finite loss ")
    assert rank0[True][0].startswith("loss became nan at epoch 0 step 1") and rank1[True][0].startswith("loss became nan at epoch 0 step 1")
    for result in (*rank0.values(), *rank1.values()):
        assert result[1:] == (1, True)  # one step done, then stopped before the optimizer's step


# ---- end to end: `sslab train` and a sweep, on the test session's Ray ---------------------------

# A temperature of 1e-30 makes NT-Xent's logits ~1e30: the loss stays finite (~1e29) but the gradient
# norm overflows at the first step. (train.lr is capped at 10, at which this BatchNorm ConvNet with its
# normalised head does not diverge within a few epochs; a huge contrastive margin diverges, but not at a
# step that is the same on one and on two workers.)
TINY = ["train.epochs=2", "train.batch_size=128", "model.width=4", "eval.knn_k=20", "eval.embedding_map_points=100",
        "train.progress=false", "data.val_fraction=0.1", "eval.linear_probe=false", "eval.random_init_baseline=false",
        "resources.cpus_per_worker=1"]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.slow
def test_sslab_train_that_diverges_ends_failed_with_the_message(ray_local, workdir, capsys):
    """Two DDP workers: both stop at the same step (no hang); the CLI exits 1 (a failed run, not bad
    input) with the message; the run is FAILED with it as sslab.error, has the step losses before it,
    no epoch metrics and no encoder."""
    from mlflow.tracking import MlflowClient

    from sslab.cli import main

    overrides = TINY + ["name=diverging", "search=null", "workload.temperature=1e-30", "resources.workers=2",
                        "train.log_step_loss_every=1"]
    assert main(["train", f"{ROOT}/examples/quickstart.yaml", *sets(overrides)]) == 1
    err = capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("diverging").experiment_id])
    assert run.info.status == "FAILED"
    error = run.data.tags["sslab.error"]
    assert error.startswith("NonFiniteLossError: ")
    message = error[len("NonFiniteLossError: "):]
    found = MESSAGE.fullmatch(message)
    assert found and found.group(3) == "0" and found.group(5) == "0.002", message
    step = int(found.group(4))
    assert f"sslab train: the run failed: {message} (MLflow run {run.info.run_id}: FAILED)" in err
    assert "Traceback" not in err.split("sslab train: the run failed")[1]
    history = client.get_metric_history(run.info.run_id, "train/step_loss")  # the steps before it, averaged over ranks
    assert [m.step for m in history] == list(range(step)) and all(math.isfinite(m.value) for m in history)
    if found.group(1) == "gradient norm":  # this step's loss was finite: it is the last finite one
        assert float(found.group(6)) > 1e20
    assert "train/loss" not in run.data.metrics  # the epoch never finished
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "error.txt" in artifacts and "encoder.pt" not in artifacts


@pytest.mark.slow
def test_a_sweep_prunes_the_diverging_trial_and_goes_on(ray_local, workdir, small_data):
    """search.prune_non_finite: the diverging trial is PRUNED in the study, its run KILLED with
    sslab.pruned=true and the message as sslab.error; the other trial COMPLETE; the parent FINISHED."""
    import optuna
    from mlflow.tracking import MlflowClient

    from orchestrator.config.loader import load_config
    from orchestrator.sweep.driver import run_sweep

    search = {"objective": "downstream/knn_top1", "direction": "maximize", "sampler": "grid", "pruner": "none",
              "n_trials": 2, "max_concurrent_trials": 2, "seed": 0, "prune_non_finite": True,
              "space": {"workload.temperature": {"type": "categorical", "choices": [0.2, 1e-30]}}}
    config = load_config(f"{ROOT}/examples/quickstart.yaml",
                         TINY + ["name=nansweep", "train.epochs=1", f"search={json.dumps(search)}"])
    result = run_sweep(config)
    assert result.counts == {"COMPLETE": 1, "PRUNED": 1}
    study = optuna.load_study(study_name="nansweep", storage=f"sqlite:///{workdir}/optuna.db")
    states = {t.params["workload.temperature"]: t.state.name for t in study.trials}
    assert states == {0.2: "COMPLETE", 1e-30: "PRUNED"}
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("nansweep").experiment_id], "tags.`sslab.kind` = 'trial'")
    by_temperature = {float(r.data.params["temperature"]): r for r in runs}
    pruned, finished = by_temperature[1e-30], by_temperature[0.2]
    assert pruned.info.status == "KILLED" and pruned.data.tags["sslab.pruned"] == "true"
    found = MESSAGE.fullmatch(pruned.data.tags["sslab.error"].removeprefix("NonFiniteLossError: "))
    assert found and found.group(3) == "0" and found.group(5) == "0.002", pruned.data.tags["sslab.error"]
    assert finished.info.status == "FINISHED" and "sslab.error" not in finished.data.tags
    assert 0.0 <= finished.data.metrics["downstream/knn_top1"] <= 1.0
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
