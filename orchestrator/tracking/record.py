"""The MLflow record of DESIGN.md: experiments, runs, params, status that tells the truth."""
import json
import os
import subprocess
import tempfile
import time
import traceback

import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.secrets import redact, redact_text
from orchestrator.tracking.sqlite_template import prepare_store

# The short names DESIGN.md's record promises, beside the full dotted config.
CONTRACT_PARAMS = {
    "workload": "workload.kind", "loss": "workload.loss", "temperature": "workload.temperature",
    "margin": "workload.margin", "batch_size": "train.batch_size", "lr": "train.lr", "epochs": "train.epochs",
    "backbone": "model.backbone", "seed": "seed", "data_uri": "data.uri",
}


# What a run learns only once its data is loaded and its device known: reported by the workers with
# the first epoch (orchestrator.trial_eval.data_record, precision_record) and recorded as params by the
# MLflow callback. scores_*: eval.precision resolved, the precision and layout the scores were computed in.
REPORTED_PARAMS = {"sslab.data_hash": "data_hash", "sslab.test_data_hash": "test_data_hash",
                   "sslab.data_mean": "data_mean", "sslab.data_std": "data_std",
                   "sslab.eval_precision": "scores_precision", "sslab.eval_channels_last": "scores_channels_last"}


def reported_params(report: dict) -> list[Param]:
    """The params among a worker's report (REPORTED_PARAMS), as MLflow Params."""
    return [Param(name, str(report[key])) for key, name in REPORTED_PARAMS.items() if key in report]


# MLflow 3's UI opens an experiment by its kind: without this tag a new experiment opens on the
# GenAI overview (an empty "Traces" page) instead of its runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MAX_DIGEST = 36  # MLflow's limit on a dataset digest (the tracking store's column)


def dataset_inputs(report: dict, params: dict[str, str]) -> list[DatasetInput]:
    """The run's data sets as MLflow dataset inputs, from a worker's report (its content hashes) and the
    run's params (the URIs): name, digest (the data hash, cut to MLflow's 36 characters; the full hash
    is the profile's `data_hash`), source. They fill the UI's Dataset column."""
    found = []
    for hash_key, uri_param, context in (("sslab.data_hash", "data_uri", "train"),
                                         ("sslab.test_data_hash", "data.test_uri", "test")):
        uri = params.get(uri_param)
        if hash_key not in report or not uri or uri == "None":
            continue
        digest = str(report[hash_key])
        name = os.path.splitext(os.path.basename(uri.split("#", 1)[0].rstrip("/")))[0] or uri
        source_type = uri.split("://", 1)[0] if "://" in uri else "local"
        if uri.startswith("synthetic:"):  # generated clips: named by the generator, not by its sprites' file
            name, source_type = uri[len("synthetic:"):].partition("?")[0], "synthetic"
        dataset = Dataset(name=name, digest=digest[:MAX_DIGEST], source_type=source_type,
                          source=json.dumps({"uri": uri}), profile=json.dumps({"data_hash": digest}))
        found.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return found


def log_dataset_inputs(client: MlflowClient, run_id: str, report: dict) -> None:
    """Log the run's data sets (dataset_inputs) once their hashes are known: with the first epoch's report."""
    if "sslab.data_hash" in report:
        inputs = dataset_inputs(report, client.get_run(run_id).data.params)
        for attempt in range(3):
            try:
                if inputs:
                    client.log_inputs(run_id, datasets=inputs)
                return
            except Exception:  # noqa: BLE001 - concurrent trials create the same dataset row: the loser retries
                if attempt == 2:  # and then finds the row the winner made
                    raise
                time.sleep(0.2 * (attempt + 1))


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_params(config: SSLabConfig) -> dict[str, str]:
    """The run's params: the contract's short names and every other config value, secrets masked."""
    flat = redact({k: v for k, v in flatten(config.model_dump()).items() if not k.startswith("tracking.")})
    params = {short: flat[full] for short, full in CONTRACT_PARAMS.items() if full in flat}  # pretext: no loss
    params.update({k: v for k, v in flat.items() if k not in CONTRACT_PARAMS.values()})
    return {k: str(v) for k, v in params.items()}


def config_yaml(config: SSLabConfig) -> str:
    """The config as a YAML artifact: every value as resolved, secrets masked (nothing reads it back)."""
    return yaml.safe_dump(redact(config.model_dump(mode="json")), sort_keys=False)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """Creates and closes runs; per-epoch logging happens in the Ray Train callback."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        self.uri = uri
        if redact_text(uri) != uri:  # MLflow prints each run's link with the tracking URI, password included
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # (MLflow's switch for that print)
        prepare_store(uri)  # a new SQLite store: a copy of a migrated one, not MLflow's migrations again
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location,
                                                               tags=EXPERIMENT_KIND)
        else:  # one made before sslab tagged them, or by hand
            self.experiment_id = found.experiment_id
            for key, value in EXPERIMENT_KIND.items():
                if found.tags.get(key) != value:
                    self.client.set_experiment_tag(self.experiment_id, key, value)

    def start_run(self, config: SSLabConfig, kind: str, run_name: str | None = None, tags: dict | None = None) -> str:
        all_tags = redact({"sslab.kind": kind, **(tags or {})})
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
        params = run_params(config)
        if commit:
            params["code_version"] = commit
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "config.yaml")
            with open(path, "w") as handle:
                handle.write(config_yaml(config))
            self.client.log_artifact(run_id, path)
        return run_id

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "FINISHED")

    def prune(self, run_id: str) -> None:
        """Stopped early by the sweep's pruner: KILLED, tagged so."""
        self.client.set_tag(run_id, "sslab.pruned", "true")
        self.client.set_terminated(run_id, "KILLED")

    def fail(self, run_id: str, error: BaseException) -> None:
        """FAILED with the error as a tag and an artifact; KILLED when stopped (Ctrl-C, SIGTERM)."""
        killed = isinstance(error, (KeyboardInterrupt, SystemExit))  # Ctrl-C; SIGTERM via Ray's handler
        message = redact_text(f"{type(error).__name__}: {error}")
        self.client.log_batch(run_id, tags=[RunTag("sslab.error", message[:4900])])
        # the status first: a process cut short during the upload below must not leave the run RUNNING
        self.client.set_terminated(run_id, "KILLED" if killed else "FAILED")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "error.txt")
            with open(path, "w") as handle:
                handle.write(redact_text("".join(traceback.format_exception(error))))
            self.client.log_artifact(run_id, path)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
