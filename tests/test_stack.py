"""The production stack the pipeline tests run on: PostgreSQL, an MLflow server on it with artifacts on
S3 (moto), the Optuna study on the same PostgreSQL, Ray Train checkpoints on s3://."""
import os
import subprocess

import boto3
import optuna
import pytest
from conftest import BIN, ROOT
from mlflow.tracking import MlflowClient


def s3_keys(stack, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_mlflow_server_on_postgres_keeps_artifacts_in_s3_and_optuna_shares_the_database(production_stack, tmp_path):
    stack = production_stack
    assert stack.tracking_uri.startswith("http://127.0.0.1:") and stack.storage_path.startswith("s3://")
    client = MlflowClient(stack.tracking_uri)
    experiment = client.create_experiment("stack-check")
    run = client.create_run(experiment, tags={"sslab.kind": "check"})
    client.log_param(run.info.run_id, "lr", "0.1")
    client.log_metric(run.info.run_id, "downstream/knn_top1", 0.5, step=0)
    (tmp_path / "note.txt").write_text("on moto")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id, "FINISHED")

    # the record is in PostgreSQL: read it straight from the server's database, not through MLflow
    import psycopg

    with psycopg.connect(stack.postgres.url("mlflow")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cursor.fetchone() == ("FINISHED",)
        cursor.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'downstream/knn_top1'",
                       (run.info.run_id,))
        assert cursor.fetchone() == (0.5,)
    # the artifact went through the server (mlflow-artifacts:) into the bucket
    assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    keys = s3_keys(stack, "mlflow/")
    assert [k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/note.txt")], keys
    back = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
    assert open(back).read() == "on moto"

    # Optuna on the same PostgreSQL: a study another process sees, with the told value
    study = optuna.create_study(study_name="stack-check", storage=stack.optuna_storage, direction="maximize")
    trial = study.ask()
    trial.suggest_float("temperature", 0.05, 1.0, log=True)
    study.tell(trial, 0.75)
    out = subprocess.run(
        [os.path.join(BIN, "python"), "-c",
         "import optuna, sys; s = optuna.load_study(study_name='stack-check', storage=sys.argv[1]); "
         "print(s.best_value, s.best_trial.state.name)", stack.optuna_storage],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.75", "COMPLETE"]
    with psycopg.connect(stack.optuna_storage) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name = 'stack-check'")
        assert cursor.fetchone() == (1,)


@pytest.mark.slow
def test_sslab_train_against_the_stack_checkpoints_to_s3(production_stack, tmp_path):
    """`sslab train` as a user runs it, with its record on the MLflow server (PostgreSQL + S3 artifacts) and
    Ray Train's storage on s3://: its own local Ray instance, in a subprocess with the stack's environment."""
    stack = production_stack
    sets = ["train.epochs=1", "model.width=4", "eval.linear_probe=false", "eval.random_init_baseline=false",
            "eval.embedding_map_points=100", "eval.knn_k=20", "train.progress=false", "train.batch_size=256",
            "name=stack-train", f"tracking.uri={stack.tracking_uri}", f"storage.path={stack.storage_path}",
            f"data.uri={ROOT}/examples/data/cifar10_sample.parquet"]
    env = {**os.environ, **stack.env}
    env.pop("RAY_ADDRESS", None)
    args = [os.path.join(BIN, "sslab"), "train", os.path.join(ROOT, "examples", "quickstart.yaml")]
    for assignment in sets:
        args += ["--set", assignment]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(stack.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("stack-train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["sslab.kind"] == "train"
    assert "downstream/knn_top1" in run.data.metrics
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.params["data_hash"][:36]
    artifacts = s3_keys(stack, "mlflow/")
    assert [k for k in artifacts if k.endswith(f"{run.info.run_id}/artifacts/encoder.pt")], artifacts
    checkpoints = s3_keys(stack, "ray/")
    assert [k for k in checkpoints if "checkpoint_" in k], checkpoints
    assert not os.path.exists(tmp_path / "sslab_runs")  # nothing went to the local default
