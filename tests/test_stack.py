"""The production stack the pipeline tests run on: PostgreSQL, an MLflow server on it with artifacts on
S3 (moto), the Optuna study on the same PostgreSQL, Ray Train checkpoints on s3://."""
import os
import subprocess

import boto3
import optuna
import pytest
import yaml
from conftest import BIN, ROOT
from mlflow.tracking import MlflowClient


def s3_keys(stack, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.mark.slow
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


def database_text(url: str) -> str:
    """Every row of every table of a PostgreSQL database, as text: what a grep of its dump would see."""
    import psycopg

    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                       "AND table_schema NOT IN ('pg_catalog', 'information_schema')")
        rows = []
        for schema, table in cursor.fetchall():
            cursor.execute(f'SELECT t::text FROM "{schema}"."{table}" t')
            rows += [f"{table}: {row}" for (row,) in cursor.fetchall()]
    return "\n".join(rows)


def bucket_objects(stack) -> dict[str, bytes]:
    """Every object in the stack's bucket (MLflow's artifacts, Ray Train's storage): {key: bytes}."""
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1")
    return {key: s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read() for key in s3_keys(stack, "")}


@pytest.mark.slow
def test_a_sweep_against_the_stack_checkpoints_to_s3_and_records_no_secret(production_stack, tmp_path, small_sample):
    """`sslab sweep` as a user runs it (one trial), with its record on the MLflow server (PostgreSQL + S3
    artifacts), the study on PostgreSQL and Ray Train's storage on s3://: its own local Ray instance, in a
    subprocess with the stack's environment. A secret is planted as the password of the tracking URI (in
    the config file) and of the study's database URL (an override on the command line); the test
    PostgreSQL trusts 127.0.0.1 and the MLflow server has no auth, so both accept any password. Then the
    whole MLflow store (its database, every object in the bucket), the study's database (user and system
    attributes included) and the driver's output are searched: the secret is nowhere."""
    import uuid

    stack = production_stack
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    tracking_uri = stack.tracking_uri.replace("http://", f"http://sslab:{secret}@")
    storage = stack.optuna_storage.replace("postgresql://sslab@", f"postgresql://sslab:{secret}@")
    assert secret in tracking_uri and secret in storage
    config = yaml.safe_load(open(os.path.join(ROOT, "examples", "quickstart.yaml")))
    config["tracking"] = {"uri": tracking_uri}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sets = ["train.epochs=1", "model.width=4", "eval.linear_probe=false", "eval.random_init_baseline=false",
            "eval.embedding_map_points=100", "eval.knn_k=20", "train.progress=false", "search.n_trials=1",
            "search.pruner=none", "search.max_concurrent_trials=1", "name=stack-sweep", f"search.storage={storage}",
            f"storage.path={stack.storage_path}", f"data.uri={small_sample}"]  # the record, not learning
    env = {**os.environ, **stack.env}
    env.pop("RAY_ADDRESS", None)
    args = [os.path.join(BIN, "sslab"), "sweep", "sweep.yaml"]
    for assignment in sets:
        args += ["--set", assignment]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    client = MlflowClient(stack.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("stack-sweep").experiment_id])
    [parent] = [r for r in runs if r.data.tags["sslab.kind"] == "sweep"]
    [trial] = [r for r in runs if r.data.tags["sslab.kind"] == "trial"]
    assert parent.info.status == trial.info.status == "FINISHED" and "downstream/knn_top1" in trial.data.metrics
    assert trial.inputs.dataset_inputs[0].dataset.digest == trial.data.params["data_hash"][:36]
    masked = storage.replace(f":{secret}@", ":***@")
    assert parent.data.params["search.storage"] == masked
    objects = bucket_objects(stack)
    assert [k for k in objects if k.endswith(f"{trial.info.run_id}/artifacts/encoder.pt")], sorted(objects)
    assert [k for k in objects if k.startswith("ray/") and "checkpoint_" in k], sorted(objects)
    assert {"config.yaml", "resolved_config.yaml"} <= {k.rpartition("/")[2] for k in objects if trial.info.run_id in k}
    assert not os.path.exists(tmp_path / "sslab_runs")  # nothing went to the local default

    # the secret is nowhere: the MLflow server's database (its params hold the masked URL: the search sees them),
    # every object of the bucket, the study's database, the study's attributes, the driver's output
    mlflow_rows = database_text(stack.postgres.url("mlflow"))
    assert masked in mlflow_rows and secret not in mlflow_rows
    assert not [key for key, body in objects.items() if secret.encode() in body]
    study_rows = database_text(stack.optuna_storage)
    assert "stack-sweep" in study_rows and "sslab.objective" in study_rows and secret not in study_rows
    study = optuna.load_study(study_name="stack-sweep", storage=stack.optuna_storage)
    attrs = [study.user_attrs] + [a for t in study.trials for a in (t.user_attrs, t.system_attrs)]
    assert secret not in repr(attrs) and study.trials[0].state.name == "COMPLETE"
    assert secret not in out.stdout + out.stderr and "sslab sweep: trial 0" in out.stdout
