"""Ray Train callback that writes each report of a run into its MLflow run.

It runs in the Ray Train controller, so one process writes a run's record and the workers stay
free of MLflow: metrics from every worker's report, artifacts from the reported checkpoint.
"""
import os

import ray.train
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from .tracking import log_metrics

SUMMED = {"train/images_per_s"}  # throughput adds up over workers
MAXED = {"bank/shard_restarts"}  # every worker sees the same restarts of the one shared bank
# everything else is averaged over workers


class MlflowReportCallback(ray.train.UserCallback):
    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context, metrics: list[dict], checkpoint: ray.train.Checkpoint | None) -> None:
        client = MlflowClient(tracking_uri=self.tracking_uri)
        lead = metrics[0]
        if "sslab.data_hash" in lead:
            client.log_batch(self.run_id, params=[Param("data_hash", str(lead["sslab.data_hash"]))])
        nodes = sorted({str(m["sslab.node_id"]) for m in metrics if "sslab.node_id" in m})
        if nodes:
            client.set_tag(self.run_id, "sslab.worker_nodes", ",".join(nodes))
        numeric = {}
        for key, value in lead.items():
            if key == "epoch" or key.startswith("sslab.") or not isinstance(value, (int, float)):
                continue
            values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
            numeric[key] = sum(values) if key in SUMMED else max(values) if key in MAXED else sum(values) / len(values)
        if numeric:
            log_metrics(client, self.run_id, numeric, step=int(lead.get("epoch", 0)))
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                if os.path.exists(os.path.join(folder, "encoder.pt")):  # the final one; per-epoch state stays in Ray storage
                    client.log_artifacts(self.run_id, folder)
