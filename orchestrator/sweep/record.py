"""The MLflow record of a sweep: one parent run (found again on resume), nested trial runs, the summary."""
import csv
import os
import tempfile
import warnings

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.secrets import redact_text
from orchestrator.sweep.study import make_storage
from orchestrator.tracking.record import Tracker, log_metrics


class SweepRecord:
    def __init__(self, config: SSLabConfig, study_name: str):
        self.config, self.study_name = config, study_name
        self.tracker = Tracker(config.tracking.uri, config.tracking.experiment or config.name,
                               config.tracking.artifact_location)
        self.client: MlflowClient = self.tracker.client
        found = self.client.search_runs(
            [self.tracker.experiment_id],
            f"tags.`sslab.kind` = 'sweep' AND tags.`sslab.sweep_id` = '{study_name}'", max_results=1)
        if found:  # resume: the same parent run, running again (a stopped run's error is history now)
            self.parent_run_id = found[0].info.run_id
            tags = found[0].data.tags
            if "sslab.error" in tags:
                self.client.set_tag(self.parent_run_id, "sslab.previous_error", tags["sslab.error"])
                self.client.delete_tag(self.parent_run_id, "sslab.error")
            self.client.set_tag(self.parent_run_id, "sslab.resumes", str(int(tags.get("sslab.resumes", "0")) + 1))
            self.client.update_run(self.parent_run_id, status="RUNNING")
        else:
            self.parent_run_id = self.tracker.start_run(config, kind="sweep", run_name=f"sweep-{study_name}",
                                                        tags={"sslab.sweep_id": study_name, "sslab.study": study_name})
            search = config.search
            self.client.log_batch(self.parent_run_id, params=[
                Param("search.objective", search.objective), Param("search.direction", search.direction),
                Param("search.sampler", search.sampler), Param("search.pruner", search.pruner),
                Param("search.n_trials", str(search.n_trials)),
                Param("search.storage", redact_text(str(search.storage)))])  # its password masked

    def trial_tags(self, number: int) -> dict:
        return {"mlflow.parentRunId": self.parent_run_id, "sslab.trial_number": str(number),
                "sslab.study": self.study_name, "sslab.sweep_id": self.study_name}

    def _trial_runs(self, where: str = "") -> list:
        query = f"tags.`sslab.sweep_id` = '{self.study_name}' AND tags.`sslab.kind` = 'trial'" + (f" AND {where}" if where else "")
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.tracker.experiment_id], query, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def invalid_trial(self, number: int, params: dict, error: Exception) -> None:
        """A trial whose parameters the config refuses: a FAILED run with those parameters and the error."""
        run = self.client.create_run(self.tracker.experiment_id, run_name=f"trial-{number}",
                                     tags={"sslab.kind": "trial", **self.trial_tags(number)})
        self.client.log_batch(run.info.run_id, params=[Param(k, redact_text(str(v))) for k, v in params.items()])
        self.tracker.fail(run.info.run_id, error)

    def fail_stale_trials(self, reason: str, status: str = "FAILED") -> list[int]:
        """This sweep's trial runs left RUNNING (by a dead or stopping driver, the study's one driver):
        FAILED (or KILLED) with the reason as tag sslab.error. Returns their trial numbers."""
        numbers = []
        for run in self._trial_runs("attributes.status = 'RUNNING'"):
            self.client.set_tag(run.info.run_id, "sslab.error", redact_text(reason))
            self.client.set_terminated(run.info.run_id, status)
            numbers.append(int(run.data.tags.get("sslab.trial_number", -1)))
        return numbers

    def fail_trial_runs(self, number: int, reason: str) -> None:
        """A trial whose process died: its run, if still RUNNING, FAILED with the reason (tag sslab.error)."""
        for run in self._trial_runs(f"tags.`sslab.trial_number` = '{number}' AND attributes.status = 'RUNNING'"):
            self.client.set_tag(run.info.run_id, "sslab.error", redact_text(reason))
            self.client.set_terminated(run.info.run_id, "FAILED")

    def fail_stopped_trial(self, number: int, params: dict, reason: str, since: float, status: str = "FAILED") -> None:
        """A trial the driver stopped (timed out, or out of the sweep's time): its run `status` with the
        reason (tag sslab.error); a trial stopped before its process opened a run gets one, with its
        parameters, so that the record shows it. `since`: when the driver started it (epoch seconds)."""
        runs = [run for run in self._trial_runs(f"tags.`sslab.trial_number` = '{number}'")
                if run.info.start_time >= (since - 300) * 1000]  # not a same-numbered trial of an earlier study
        for run in runs:
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "sslab.error", reason)
                self.client.set_terminated(run.info.run_id, status)
        if not runs:
            run = self.client.create_run(self.tracker.experiment_id, run_name=f"trial-{number}",
                                         tags={"sslab.kind": "trial", **self.trial_tags(number), "sslab.error": reason})
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            self.client.set_terminated(run.info.run_id, status)

    def outcomes(self, started: dict[int, float], objective: str) -> dict[int, tuple[float | None, str]]:
        """What became of trials the study still holds RUNNING ({number: start time, epoch seconds}),
        as their MLflow runs tell it: {number: (value, COMPLETE | PRUNED | FAIL)} for those whose run
        ended before the driver died (FINISHED with the objective: COMPLETE; pruned: PRUNED; FAILED, or
        FINISHED without the objective: FAIL, as the driver would have told them). Runs still RUNNING,
        stopped with the driver (KILLED, not pruned) or missing are left out: interrupted."""
        found: dict[int, object] = {}
        for run in self._trial_runs("attributes.status != 'RUNNING'"):
            try:
                number = int(run.data.tags.get("sslab.trial_number", ""))
            except ValueError:
                continue
            # a run of this trial, not of a same-numbered trial of an earlier study of the same name
            if number in started and run.info.start_time >= (started[number] - 300) * 1000:
                if number not in found or run.info.start_time > found[number].info.start_time:
                    found[number] = run
        outcomes = {}
        for number, run in found.items():
            status, tags = run.info.status, run.data.tags
            if status == "FINISHED":
                value = run.data.metrics.get(objective)
                outcomes[number] = (value, "COMPLETE") if value is not None else (None, "FAIL")
            elif status == "KILLED" and tags.get("sslab.pruned") == "true":
                outcomes[number] = (None, "PRUNED")
            elif status == "FAILED" and "sslab.error" in tags and not tags["sslab.error"].startswith("the sweep driver"):
                outcomes[number] = (None, "FAIL")
        return outcomes

    def objective_value(self, run_id: str, objective: str) -> float | None:
        return self.client.get_run(run_id).data.metrics.get(objective)

    def best_test_scores(self, number: int) -> dict[str, float]:
        """The held-out test/ metrics of trial `number`'s finished run (what the study never saw)."""
        runs = self._trial_runs(f"tags.`sslab.trial_number` = '{number}' AND attributes.status = 'FINISHED'")
        if not runs:
            return {}
        run = max(runs, key=lambda r: r.info.start_time)
        return {key: value for key, value in sorted(run.data.metrics.items()) if key.startswith("test/")}

    def finish(self, best, table: list[dict], coordinator) -> dict[str, float]:
        """The parent run: best/<objective>, best/trial_number and the best trial's held-out scores as
        best/test/..., the trials table and the study's figures; FINISHED. Returns those test scores."""
        objective = self.config.search.objective
        test_scores = {}
        if best is not None:
            number, value, params = best
            test_scores = self.best_test_scores(number)
            log_metrics(self.client, self.parent_run_id, {f"best/{objective}": value, "best/trial_number": number,
                                                          **{f"best/{k}": v for k, v in test_scores.items()}}, step=0)
            self.client.set_tag(self.parent_run_id, "sslab.best_trial", str(number))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "trials.csv")
            keys = sorted({k for row in table for k in row}, key=lambda k: (k not in ("number", "state", "value"), k))
            with open(path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=keys)
                writer.writeheader()
                writer.writerows(table)
            self.client.log_artifact(self.parent_run_id, path)
            for name, figure in study_figures(self.config, self.study_name).items():
                figure_path = os.path.join(folder, name)
                figure.savefig(figure_path, dpi=110, bbox_inches="tight")
                self.client.log_artifact(self.parent_run_id, figure_path)
        self.client.set_terminated(self.parent_run_id, "FINISHED")
        return test_scores

    def fail(self, error: BaseException) -> None:
        """The driver stopped: the parent run FAILED with the error (tag sslab.error, error.txt), or KILLED
        when it was stopped (KeyboardInterrupt; SystemExit, which Ray's SIGTERM handler raises)."""
        self.tracker.fail(self.parent_run_id, error)


def study_figures(config: SSLabConfig, study_name: str) -> dict:
    """Optuna's optimisation history and parameter importances, as matplotlib figures."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as plots

    # the matplotlib plots are flagged experimental; the flag says nothing about this figure
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name=study_name, storage=make_storage(config.search))
    figures = {"optimization_history.png": plots.plot_optimization_history(study).figure}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        try:
            figures["param_importances.png"] = plots.plot_param_importances(study).figure
        except (RuntimeError, ValueError):  # too few distinct trials for an importance estimate
            pass
    return figures
