"""The MLflow record of a sweep: one parent run (found again on resume), nested trial runs, the summary."""
import csv
import os
import tempfile

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from .config import SSLabConfig
from .tracking import Tracker, log_metrics


class SweepRecord:
    def __init__(self, config: SSLabConfig, study_name: str):
        self.config, self.study_name = config, study_name
        self.tracker = Tracker(config.tracking.uri, config.tracking.experiment or config.name,
                               config.tracking.artifact_location)
        self.client: MlflowClient = self.tracker.client
        found = self.client.search_runs(
            [self.tracker.experiment_id],
            f"tags.`sslab.kind` = 'sweep' AND tags.`sslab.sweep_id` = '{study_name}'", max_results=1)
        if found:  # resume: the same parent run
            self.parent_run_id = found[0].info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
        else:
            self.parent_run_id = self.tracker.start_run(config, kind="sweep", run_name=f"sweep-{study_name}",
                                                        tags={"sslab.sweep_id": study_name, "sslab.study": study_name})
            search = config.search
            self.client.log_batch(self.parent_run_id, params=[
                Param("search.objective", search.objective), Param("search.direction", search.direction),
                Param("search.sampler", search.sampler), Param("search.pruner", search.pruner),
                Param("search.n_trials", str(search.n_trials)), Param("search.storage", str(search.storage))])

    def trial_tags(self, number: int) -> dict:
        return {"mlflow.parentRunId": self.parent_run_id, "sslab.trial_number": str(number),
                "sslab.study": self.study_name, "sslab.sweep_id": self.study_name}

    def fail_stale_trials(self, numbers: list[int]) -> None:
        """Trial runs a dead driver left RUNNING are FAILED with the reason; the study marked them FAIL."""
        for run in self.client.search_runs([self.tracker.experiment_id],
                                           f"tags.`sslab.sweep_id` = '{self.study_name}' AND tags.`sslab.kind` = 'trial' "
                                           "AND attributes.status = 'RUNNING'"):
            self.client.set_tag(run.info.run_id, "sslab.error", "the sweep driver stopped while this trial ran")
            self.client.set_terminated(run.info.run_id, "FAILED")

    def objective_value(self, run_id: str, objective: str) -> float | None:
        return self.client.get_run(run_id).data.metrics.get(objective)

    def finish(self, best, table: list[dict], coordinator) -> None:
        objective = self.config.search.objective
        if best is not None:
            number, value, params = best
            log_metrics(self.client, self.parent_run_id, {f"best/{objective}": value, "best/trial_number": number}, step=0)
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

    def fail(self, error: BaseException) -> None:
        self.tracker.fail(self.parent_run_id, error)


def study_figures(config: SSLabConfig, study_name: str) -> dict:
    """Optuna's optimisation history and parameter importances, as matplotlib figures."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as plots

    from .study import make_storage

    study = optuna.load_study(study_name=study_name, storage=make_storage(config.search))
    figures = {"optimization_history.png": plots.plot_optimization_history(study).figure}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        try:
            figures["param_importances.png"] = plots.plot_param_importances(study).figure
        except (RuntimeError, ValueError):  # too few distinct trials for an importance estimate
            pass
    return figures
