"""The MLflow record of a pipeline: one experiment per pipeline, one run per step and run key
(tags sslab.kind=pipeline_step, sslab.pipeline, sslab.run_key, sslab.step). A step's outputs are
kept on its run (tag sslab.output, JSON), so a later run of the same key reads them back instead of
working again."""
import json
import time

from mlflow.entities import Metric, RunTag

from orchestrator.config.secrets import redact
from orchestrator.tracking.record import Tracker
from pipelines.plan import Plan

KIND = "pipeline_step"
DIED = "the pipeline's process died during this step (found RUNNING by the next run of this run key)"


class PipelineRecord:
    def __init__(self, plan: Plan):
        self.plan = plan
        config = plan.config
        self.tracker = Tracker(config.tracking.uri, plan.spec.name, config.tracking.artifact_location)
        self.client = self.tracker.client

    def runs(self, run_key: str | None = None, step: str | None = None, max_results: int = 1000) -> list:
        """Step runs, newest first: of one run key (default this plan's) or of every key (run_key='*')."""
        query = f"tags.`sslab.kind` = '{KIND}' AND tags.`sslab.pipeline` = '{self.plan.spec.name}'"
        key = self.plan.run_key if run_key is None else run_key
        if key != "*":
            query += f" AND tags.`sslab.run_key` = '{key}'"
        if step:
            query += f" AND tags.`sslab.step` = '{step}'"
        return self.client.search_runs([self.tracker.experiment_id], query, max_results=max_results,
                                       order_by=["attributes.start_time DESC"])

    def settle_dead(self) -> list[str]:
        """Step runs left RUNNING: the lock is ours, so their process is gone. FAILED, with the reason;
        so are their child runs left RUNNING (the train step's training run)."""
        settled = []
        for run in self.runs():
            if run.info.status == "RUNNING":
                children = self.client.search_runs(
                    [self.tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}' "
                    "AND attributes.status = 'RUNNING'", max_results=1000)
                for dead in [*children, run]:
                    self.client.set_tag(dead.info.run_id, "sslab.error", DIED)
                    self.client.set_terminated(dead.info.run_id, "FAILED")
                settled.append(run.data.tags.get("sslab.step", "?"))
        return settled

    def finished(self, step: str) -> dict | None:
        """The outputs of this key's FINISHED run of the step, or None when it has none."""
        for run in self.runs(step=step):
            if run.info.status == "FINISHED":
                return json.loads(run.data.tags.get("sslab.output", "{}"))
        return None

    def start(self, step: str) -> str:
        return self.tracker.start_run(self.plan.config, kind=KIND, run_name=f"{step}-{self.plan.run_key}",
                                      tags=self.plan.tags(step))

    def finish(self, run_id: str, output: dict, metrics: dict[str, float] | None = None) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                              tags=[RunTag("sslab.output", json.dumps(redact(output), sort_keys=True)[:4900])])
        self.tracker.finish(run_id)

    def fail(self, run_id: str, error: BaseException) -> None:
        self.tracker.fail(run_id, error)
