"""The sweep's one writer to the Optuna study: a Ray actor that asks, takes reports (pruning) and tells.

Trials report their per-epoch values through it, so concurrent trials never write the study's
storage (a SQLite file by default) at the same time.
"""
import optuna

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.search import SearchConfig
from orchestrator.sweep.study import exhausted, open_study, recover_interrupted, suggest


class StudyCoordinator:
    def __init__(self, search: dict, study_name: str, base: dict):
        self.search = SearchConfig.model_validate(search)
        self.base = SSLabConfig.model_validate({**base, "search": None})
        self.study = open_study(self.search, study_name, base=self.base)
        self.trials: dict[int, optuna.trial.Trial] = {}

    def counts(self) -> dict[str, int]:
        states = [t.state.name for t in self.study.get_trials(deepcopy=False)]
        return {state: states.count(state) for state in set(states)}

    def interrupted(self) -> dict[int, float]:
        """The trials left RUNNING by a driver that died (or stopped): {number: start time, epoch seconds}."""
        return {t.number: t.datetime_start.timestamp() if t.datetime_start else 0.0
                for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}

    def recover(self, outcomes: dict[int, tuple[float | None, str]]) -> list[int]:
        """Settle the RUNNING trials of a driver that is gone: those in outcomes ({number: (value, state)},
        what their MLflow runs show became of them) are told so; the rest are marked FAIL and their
        parameters queued to run again. Returns the numbers marked FAIL and queued."""
        for number, (value, state) in outcomes.items():
            self.study.tell(number, value if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
            self.trials.pop(number, None)
        failed = recover_interrupted(self.study, retry=True)
        for number in failed:
            self.trials.pop(number, None)
        return failed

    def exhausted(self) -> bool:
        """A grid search whose every parameter set has run or runs now (never, for other samplers)."""
        return exhausted(self.study, self.search, self.base, running=True)

    def ask(self) -> tuple[int, dict]:
        trial = self.study.ask()
        self.trials[trial.number] = trial
        return trial.number, suggest(trial, self.search, self.base)

    def report(self, number: int, step: int, value: float) -> bool:
        """Record an intermediate value; True when the pruner says stop."""
        trial = self.trials[number]
        trial.report(value, step)
        return trial.should_prune()

    def tell(self, number: int, value: float | None, state: str) -> None:
        self.study.tell(self.trials.pop(number), value if state == "COMPLETE" else None,
                        state=optuna.trial.TrialState[state])

    def best(self) -> tuple[int, float, dict] | None:
        try:
            best = self.study.best_trial
        except ValueError:
            return None
        return best.number, best.value, best.params

    def table(self) -> list[dict]:
        return [{"number": t.number, "state": t.state.name, "value": t.value, **t.params}
                for t in self.study.get_trials(deepcopy=False)]
