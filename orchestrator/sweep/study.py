"""The Optuna objects a `search:` block describes: sampler, pruner, storage, study, and the
define-by-run suggestion of one trial's parameters (conditional ones after the loss)."""
from __future__ import annotations

import importlib.util
import itertools
import math
import os
import warnings
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from orchestrator.config.local_paths import (
    DEFAULT_STUDY_STORAGE,
    absolute_store_url,
    local_store_path,
)
from orchestrator.config.search import CONDITIONS, SearchConfig
from orchestrator.config.search_checks import get_key
from orchestrator.config.secrets import redact_text

OBJECTIVE_ATTR = "sslab.objective"
RETRY_ATTR = "sslab.retry_of"


# --------------------------------------------------------------------------- parameters


def _order(search: SearchConfig) -> list[str]:
    """The space's keys, those others depend on first (define-by-run: the loss before margin/temperature)."""
    parents = {parent for key, (parent, _) in CONDITIONS.items() if key in search.space}
    return [k for k in search.space if k in parents] + [k for k in search.space if k not in parents]


def _active(key: str, params: Mapping[str, Any], base: Any) -> bool:
    """Whether a key is sampled given the parameters so far and the base config (unknown parent: yes)."""
    if key not in CONDITIONS:
        return True
    parent, allowed = CONDITIONS[key]
    value = params[parent] if parent in params else (get_key(base, parent) if base is not None else None)
    return value is None or value in allowed


def suggest(trial: optuna.Trial, search: SearchConfig, base: Any = None) -> dict[str, Any]:
    """Suggest one trial's parameters: {dotted key: value}, the Optuna parameter names being the keys.

    The keys others depend on (workload.loss) are suggested first; workload.margin then only for a
    margin-based loss and workload.temperature only for an InfoNCE-style one. `base` (an SSLabConfig
    or its raw dict) gives a parent's value where the space does not sample it; without it, such
    conditional keys are always sampled.
    """
    params: dict[str, Any] = {}
    for key in _order(search):
        if not _active(key, params, base):
            continue
        spec = search.space[key]
        if spec.type == "categorical":
            params[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            params[key] = trial.suggest_int(key, spec.low, spec.high, step=spec.step, log=spec.log)
        else:
            params[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


def space_size(search: SearchConfig, base: Any = None) -> int | None:
    """The number of distinct parameter sets the space holds (conditionals counted once), or None
    when a dimension is continuous. A grid search runs this many trials at most."""
    values = {key: spec.values() for key, spec in search.space.items()}
    if any(v is None for v in values.values()):
        return None
    order = _order(search)
    parents = [k for k in order if any(CONDITIONS.get(c, (None,))[0] == k for c in search.space)]
    total = 0
    for combo in itertools.product(*(values[p] for p in parents)):
        fixed = dict(zip(parents, combo))
        total += math.prod(len(values[k]) for k in order if k not in fixed and _active(k, fixed, base))
    return total


# --------------------------------------------------------------------------- sampler and pruner


def _startup_trials(search: SearchConfig) -> int:
    """Random trials before the model-based samplers take over: Optuna's 10, fewer for small budgets."""
    return 10 if search.n_trials is None else max(2, min(10, search.n_trials // 2))


def make_sampler(search: SearchConfig, base: Any = None) -> optuna.samplers.BaseSampler:
    """tpe: multivariate, grouped TPE (conditional subspaces modelled apart), constant liar for
    concurrent trials; random; gp; cmaes (CMA-ES on the numeric dimensions, random for the rest);
    grid: GridSampler over a plain product, BruteForceSampler when a conditional dimension hangs on a
    sampled key (each distinct parameter set once). `base` gives fixed parents (see `suggest`)."""
    with warnings.catch_warnings():  # group=True and BruteForceSampler are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(search, base)


def _sampler(search: SearchConfig, base: Any) -> optuna.samplers.BaseSampler:
    seed = search.seed
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup_trials(search), multivariate=True,
                                          group=True, constant_liar=True)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup_trials(search))
    if search.sampler == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise ImportError("search.sampler cmaes needs the `cmaes` package: pip install cmaes (or use tpe or gp)")
        return optuna.samplers.CmaEsSampler(seed=seed, independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                            warn_independent_sampling=False)
    # grid
    if any(key in CONDITIONS and CONDITIONS[key][0] in search.space for key in search.space):
        return BruteForceSampler(seed=seed)
    grid = {key: spec.values() for key, spec in search.space.items() if _active(key, {}, base)}
    return GridSampler(grid, seed=seed)


def _after_trial_without_stop(after_trial, study, trial, state, values) -> None:
    try:
        after_trial(study, trial, state, values)
    except RuntimeError as error:  # Study.stop() outside study.optimize: ask-and-tell decides itself
        if "Study.stop" not in str(error):
            raise


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, usable with ask-and-tell: at the end of the grid it calls study.stop(),
    which raises outside study.optimize; here that is skipped (ask `exhausted(study, search)` instead)."""

    def after_trial(self, study, trial, state, values) -> None:
        _after_trial_without_stop(super().after_trial, study, trial, state, values)


class BruteForceSampler(optuna.samplers.BruteForceSampler):
    """Optuna's BruteForceSampler (an exhaustive walk of a conditional space), usable with ask-and-tell."""

    def after_trial(self, study, trial, state, values) -> None:
        _after_trial_without_stop(super().after_trial, study, trial, state, values)


def exhausted(study: optuna.Study, search: SearchConfig, base: Any = None, running: bool = False) -> bool:
    """Whether a grid search has run every parameter set of its space (always False for other samplers):
    no retry waits and the finished trials (complete, pruned, failed) cover space_size() distinct sets.
    running=True counts running trials too: nothing is left to ask for (a further ask would repeat one)."""
    size = space_size(search, base) if search.sampler == "grid" else None
    if size is None or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) + ((TrialState.RUNNING,) if running else ())
    done = study.get_trials(deepcopy=False, states=states)
    return len({tuple(sorted(t.params.items())) for t in done}) >= size


def make_pruner(search: SearchConfig, epochs: int | None = None) -> optuna.pruners.BasePruner:
    """Pruners over per-epoch intermediate values (step = epoch). median: MedianPruner(2 startup
    trials, 1 warm-up step). successive_halving and hyperband: reduction factor 3 with rungs from
    min_resource = epochs/27 (>= 1), i.e. about four rungs before the last epoch; hyperband's
    max_resource is the epochs ("auto", from the first finished trial, when they are not given)."""
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    min_resource = max(1, round(epochs / 27)) if epochs else 1
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=3)
    return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max(epochs, min_resource) if epochs else "auto",
                                          reduction_factor=3)


# --------------------------------------------------------------------------- storage and study


def storage_url(search: SearchConfig) -> str:
    """The storage with local paths made absolute: sqlite:////abs/optuna.db, journal:/abs/file, or the URL."""
    return absolute_store_url(search.storage or DEFAULT_STUDY_STORAGE)


def make_storage(search: SearchConfig) -> optuna.storages.BaseStorage:
    """journal:PATH -> JournalStorage(JournalFileBackend(PATH)); any other URL -> RDBStorage (sqlite:
    its folder created, a 60 s busy timeout so that concurrent writers wait rather than fail)."""
    url = storage_url(search)
    path = local_store_path(url)
    if path is not None and path != ":memory:":
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(path))
    engine_kwargs = {"connect_args": {"timeout": 60}} if path is not None else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def open_study(search: SearchConfig, name: str, base: Any = None, epochs: int | None = None,
               storage: optuna.storages.BaseStorage | str | None = None) -> optuna.Study:
    """Create the study or open it again (resume): study_name = search.study_name or name.

    `base` (the SSLabConfig) gives fixed conditional parents and, unless `epochs` is given, the
    pruner's epochs (base.train.epochs). `storage` overrides make_storage(search) (e.g. in-memory).
    Reopening a study made for another objective or direction is refused."""
    if epochs is None and base is not None:
        epochs = get_key(base, "train.epochs")
    study_name = search.study_name or name
    study = optuna.create_study(storage=storage if storage is not None else make_storage(search),
                                sampler=make_sampler(search, base), pruner=make_pruner(search, epochs),
                                study_name=study_name, direction=search.direction, load_if_exists=True)
    recorded = study.user_attrs.get(OBJECTIVE_ATTR)
    if study.direction.name.lower() != search.direction or recorded not in (None, search.objective):
        raise ValueError(f"study {study_name!r} in {redact_text(storage_url(search))} was made to {study.direction.name.lower()} "
                         f"{recorded or 'an unrecorded objective'}; this config asks to {search.direction} "
                         f"{search.objective}: set search.study_name to start a new study")
    if recorded is None:
        study.set_user_attr(OBJECTIVE_ATTR, redact_text(search.objective))  # user attrs: never a secret
    return study


def recover_interrupted(study: optuna.Study, retry: bool = True) -> list[int]:
    """After a driver was killed: mark its RUNNING trials FAIL and, with retry, enqueue their
    parameters again (once; user attr sslab.retry_of). Only for the one driver of a study.
    Returns the numbers of the trials it failed."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    queued = {t.user_attrs.get(RETRY_ATTR) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
        if retry and trial.number not in queued:
            study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: trial.number})
    return [t.number for t in running]
