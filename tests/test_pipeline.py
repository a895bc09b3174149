"""`sslab pipeline run` end to end (slow: Ray, against the production stack: an MLflow server on
PostgreSQL with artifacts on moto S3, the Optuna study on PostgreSQL, Ray Train checkpoints on S3).
One tiny pipeline (2 trials of 1 epoch, width 4) shared by the checks: the lock, idempotency, the
champion gate, loading the champion."""
import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import BIN, ROOT, SAMPLE
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
NIGHTLY = os.path.join(ROOT, "pipelines", "nightly.yaml")
MODEL = "test-pipeline-encoder"
# The sweep: 2 trials of width 4 on the quick start's settings (one point in its space, so that the train step
# retrains exactly the settings the later runs use). The gated encoders are width 16 (measured on this
# evaluation set's split, kNN top-1: untrained 0.310, 2 epochs 0.358, 8 epochs 0.382).
ONE_POINT = '{"train.batch_size": {"type": "categorical", "choices": [256]}}'
TINY = ["model.width=4", "eval.embedding_map_points=100", f"pipeline.model={MODEL}", f"search.space={ONE_POINT}",
        "pipeline.steps=[sweep, {train: {set: [model.width=16, train.epochs=2]}}, evaluate, register, promote]"]


class Pipeline:
    def __init__(self, folder, stack):
        self.folder, self.tracking_uri = folder, stack.tracking_uri
        self.sets = TINY + stack.sets() + [f"pipeline.lock_dir={folder}/locks"]

    def command(self, key: str, *extra: str) -> list[str]:
        command = [os.path.join(BIN, "sslab"), "pipeline", "run", NIGHTLY, "--run-key", key]
        for assignment in self.sets + list(extra):
            command += ["--set", assignment]
        return command

    def start(self, key: str, *extra: str, log: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(key, *extra), cwd=self.folder, stdout=subprocess.PIPE,
                                stderr=open(self.folder / log, "w"), text=True, start_new_session=True)

    def run(self, key: str, *extra: str, log: str, timeout: float = 900) -> tuple[int, dict, float]:
        started = time.time()
        process = self.start(key, *extra, log=log)
        out, _ = process.communicate(timeout=timeout)
        assert process.returncode in (0, 4), (self.folder / log).read_text()[-4000:]
        return process.returncode, json.loads(out), time.time() - started

    def trial_runs(self) -> list:
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name("nightly")
        return client.search_runs([experiment.experiment_id], "tags.`sslab.kind` = 'trial'", max_results=1000)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, production_stack):
    folder = tmp_path_factory.mktemp("pipeline")
    os.makedirs(folder / "examples" / "data")
    shutil.copy(SAMPLE, folder / "examples" / "data" / "cifar10_sample.parquet")
    return Pipeline(folder, production_stack)  # its environment (moto's endpoint) reaches the subprocesses


@pytest.fixture(scope="module")
def first(pipeline):
    """Run K1, and while it runs, a second K1 that must find the lock."""
    started = time.time()
    process = pipeline.start("K1", log="first.log")
    lock = pipeline.folder / "locks" / "nightly.pipeline.lock"
    while not (lock.exists() and lock.read_text().strip()):
        assert process.poll() is None, (pipeline.folder / "first.log").read_text()[-4000:]
        time.sleep(0.2)
    second_started = time.time()
    second = subprocess.run(pipeline.command("K1"), cwd=pipeline.folder, capture_output=True, text=True, timeout=60)
    second_took = time.time() - second_started
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, (pipeline.folder / "first.log").read_text()[-4000:]
    return {"outcome": json.loads(out), "took": time.time() - started, "second": second, "second_took": second_took,
            "holder_pid": process.pid}


def test_second_run_at_once_is_locked(first):
    second = first["second"]
    assert second.returncode == 3, second.stderr[-3000:]
    assert first["second_took"] < 10
    assert f"pid {first['holder_pid']}" in second.stderr and "run_key K1" in second.stderr


def test_first_run_registers_a_champion(first, pipeline):
    outcome = first["outcome"]
    assert outcome["status"] == "done" and outcome["ran"] == ["sweep", "train", "evaluate", "register", "promote"]
    promote = outcome["outputs"]["promote"]
    assert promote["promoted"] is True and promote["version"] == "1" and promote["champion_before"] is None
    client = MlflowClient(pipeline.tracking_uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1" and version.run_id  # linked to its (register step's) run
    assert version.tags["sslab.run_key"] == "K1" and version.tags["data_hash"] not in ("", "unknown")
    assert float(version.tags["eval/knn_top1"]) == pytest.approx(outcome["outputs"]["evaluate"]["knn_top1"])
    assert len(pipeline.trial_runs()) == 2
    runs = client.search_runs([client.get_experiment_by_name("nightly").experiment_id],
                              "tags.`sslab.kind` = 'pipeline_step' AND tags.`sslab.run_key` = 'K1'")
    assert sorted(r.data.tags["sslab.step"] for r in runs) == ["evaluate", "promote", "register", "sweep", "train"]
    assert all(r.info.status == "FINISHED" and r.data.tags["sslab.pipeline"] == "nightly" for r in runs)


def test_same_key_again_does_no_work(first, pipeline):
    trials = len(pipeline.trial_runs())
    code, outcome, took = pipeline.run("K1", log="again.log")
    assert code == 0 and took < 30
    assert outcome["status"] == "already done" and outcome["ran"] == []
    assert outcome["outputs"] == first["outcome"]["outputs"]
    assert len(pipeline.trial_runs()) == trials


def test_champion_loads_and_reproduces_its_knn(first, pipeline, monkeypatch):
    import mlflow
    import mlflow.pytorch

    from pipelines.model import knn_top1, load_evaluation
    from pipelines.plan import make_plan

    monkeypatch.chdir(pipeline.folder)
    plan = make_plan(NIGHTLY, pipeline.sets, run_key="K1")
    mlflow.set_tracking_uri(pipeline.tracking_uri)
    model = mlflow.pytorch.load_model(f"models:/{MODEL}@champion", map_location="cpu")
    score = knn_top1(model, load_evaluation(plan.spec.evaluation, 32))
    assert score == pytest.approx(first["outcome"]["outputs"]["evaluate"]["knn_top1"], abs=1e-6)


def test_worse_candidate_keeps_the_champion_and_a_better_one_takes_it(first, pipeline):
    client = MlflowClient(pipeline.tracking_uri)
    # worse on purpose: the champion's encoder not trained (lr 1e-9 leaves its random initialisation)
    worse = "pipeline.steps=[{train: {set: [model.width=16, train.lr=1.0e-9]}}, evaluate, register, promote]"
    code, outcome, _ = pipeline.run("K2", worse, log="worse.log")
    promote = outcome["outputs"]["promote"]
    assert code == 4 and promote["promoted"] is False and promote["champion_after"] == "1"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    reason = client.get_model_version(MODEL, promote["version"]).tags["sslab.rejected"]
    assert "does not beat the champion" in reason and reason == promote["reason"]
    assert promote["candidate_knn_top1"] < promote["champion_knn_top1"]
    # better: the champion's settings trained 5x longer
    better = "pipeline.steps=[{train: {set: [model.width=16, train.epochs=10]}}, evaluate, register, promote]"
    code, outcome, _ = pipeline.run("K3", better, log="better.log")
    promote = outcome["outputs"]["promote"]
    assert code == 0 and promote["promoted"] is True, promote
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == promote["version"] and champion.tags["previous_champion"] == "1"
    status = subprocess.run([os.path.join(BIN, "sslab"), "pipeline", "status", NIGHTLY, "--set",
                             f"tracking.uri={pipeline.tracking_uri}", "--format", "json"],
                            cwd=pipeline.folder, capture_output=True, text=True, timeout=120)
    rows = {row["run_key"]: row for row in json.loads(status.stdout)}
    assert rows["K2"]["rejected"] and rows["K2"]["champion_after"] == "1"
    assert rows["K3"]["champion_before"] == "1" and rows["K1"]["steps"]["sweep"] == "FINISHED"
