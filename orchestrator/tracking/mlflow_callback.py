"""Ray Train callback that writes each report of a run into its MLflow run.

It runs in the Ray Train controller, so one process writes a run's record and the workers stay
free of MLflow: metrics from every worker's report, artifacts from the reported checkpoint.
"""
import os
import time

import ray.train
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.tracking.record import log_dataset_inputs, log_metrics, reported_params

SUMMED = {"train/images_per_s"}  # throughput adds up over workers
MAXED = {"bank/shard_restarts"}  # every worker sees the same restarts of the one shared bank
# everything else is averaged over workers


def step_loss_means(metrics: list[dict]) -> dict[int, float]:
    """Global step -> the step's loss averaged over the workers that reported it (train.log_step_loss_every)."""
    per_step: dict[int, list[float]] = {}
    for report in metrics:
        for step, loss in report.get("sslab.step_losses", ()):
            per_step.setdefault(int(step), []).append(float(loss))
    return {step: sum(losses) / len(losses) for step, losses in per_step.items()}


class MlflowReportCallback(ray.train.UserCallback):
    """One per run, in its controller, which outlives worker-group restarts: so it also counts them.

    A restart shows in the reports as a resumed epoch (train/resumed_from_epoch, from a checkpoint) or
    as an epoch reported again (a restart before the first checkpoint): logged as train/restarts."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.last_epoch, self.restarts = -1, 0

    def after_report(self, run_context, metrics: list[dict], checkpoint: ray.train.Checkpoint | None) -> None:
        client = MlflowClient(tracking_uri=self.tracking_uri)
        lead = metrics[0]
        params = reported_params(lead)  # data_hash, data_mean, data_std, ...
        if params:
            client.log_batch(self.run_id, params=params)
        log_dataset_inputs(client, self.run_id, lead)  # the UI's Dataset column, once the hash is known
        nodes = sorted({str(m["sslab.node_id"]) for m in metrics if "sslab.node_id" in m})
        if nodes:
            client.set_tag(self.run_id, "sslab.worker_nodes", ",".join(nodes))
        numeric = {}
        for key, value in lead.items():
            if key == "epoch" or key.startswith("sslab.") or not isinstance(value, (int, float)):
                continue
            values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
            numeric[key] = sum(values) if key in SUMMED else max(values) if key in MAXED else sum(values) / len(values)
        epoch = int(lead.get("epoch", 0))
        if "train/resumed_from_epoch" in lead or (epoch <= self.last_epoch and "sslab.data_hash" in lead):
            self.restarts += 1
            numeric["train/restarts"] = self.restarts
        self.last_epoch = max(self.last_epoch, epoch)
        if numeric:
            log_metrics(client, self.run_id, numeric, step=int(lead.get("epoch", 0)))
        step_losses = step_loss_means(metrics)
        if step_losses:
            now = int(time.time() * 1000)
            client.log_batch(self.run_id, metrics=[Metric("train/step_loss", loss, now, step)
                                                   for step, loss in sorted(step_losses.items())])
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                if os.path.exists(os.path.join(folder, "encoder.pt")):  # the final one; per-epoch state stays in Ray storage
                    client.log_artifacts(self.run_id, folder)
