"""The `search:` block of a sweep config: objective, sampler, pruner, budget, storage and space.

    search:
      objective: downstream/knn_top1      # a DESIGN.md metric: downstream/... repr/... train/... bank/...
      direction: maximize                 # maximize | minimize
      sampler: tpe                        # tpe | random | grid | cmaes | gp
      pruner: median                      # median | successive_halving | hyperband | none
      n_trials: 8                         # and/or timeout_minutes (at least one)
      max_concurrent_trials: 2
      storage: null                       # null: sqlite:///optuna.db | any database URL | journal:PATH
      space:
        workload.loss: {type: categorical, choices: [nt_xent, triplet]}
        workload.temperature: {type: float, low: 0.05, high: 1.0, log: true}
        workload.margin: {type: float, low: 0.1, high: 2.0}
        train.batch_size: {type: categorical, choices: [128, 256]}
        model.width: {type: int, low: 8, high: 32, step: 8}

Space keys are dotted paths to a number, flag or choice of the rest of the config. Every bound and
choice is checked against the target field here (its type and range); `check_search(config)`
also checks each value against the rest of one config (cross-field rules such as batch size vs
workers, loss vs bank negatives) and that conditional parameters can be sampled at all.

Conditional parameters (CONDITIONS): `workload.margin` is sampled only for margin-based losses
(contrastive, triplet, lifted_structured) and `workload.temperature` only for InfoNCE-style
losses (nt_xent, info_nce), whether the loss is sampled or fixed in the config. The loss is
suggested first (define-by-run), then the parameters that depend on it.

Samplers: tpe (default; multivariate TPE grouped by conditional subspace), random, gp (Gaussian
process), cmaes (CMA-ES over the int/float dimensions, needs the `cmaes` package and at least two
such dimensions; categorical and conditional ones are sampled at random), and grid: an
exhaustive search that runs every combination of the space exactly once and then stops, in a
random order fixed by the seed. Every dimension must then be categorical or an int range (its
step, default 1, spaces the values); a float range is refused (list the values as categorical
choices). Conditional parameters are expanded only under the parent values that use them
(triplet x margins + nt_xent x temperatures, not loss x margin x temperature): Optuna's
GridSampler for a plain product, its BruteForceSampler when the space is conditional.
"""
from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from orchestrator.config.search_keys import check_key, problems_message
from orchestrator.config.sections import Section

MARGIN_LOSSES = ("contrastive", "triplet", "lifted_structured")
INFONCE_LOSSES = ("nt_xent", "info_nce")
# key -> (the key it depends on, the values of that key under which it is sampled)
CONDITIONS: dict[str, tuple[str, tuple]] = {
    "workload.margin": ("workload.loss", MARGIN_LOSSES),
    "workload.temperature": ("workload.loss", INFONCE_LOSSES),
}
METRICS = ("train/loss", "train/lr", "train/images_per_s", "downstream/knn_top1", "downstream/linear_top1",
           "repr/alignment", "repr/uniformity")
METRIC_PREFIXES = ("downstream/", "repr/", "train/", "bank/")
GRID_SAMPLERS = ("grid",)

Choice = Union[bool, int, float, str, None]


class ParamSpec(Section):
    """One dimension of the space: a float or int range (optionally log-scaled or stepped) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Choice] | None = None
    key: str | None = Field(None, exclude=True, repr=False,
                            description="the space's key for this entry, filled in by SearchConfig (not written by hand)")

    @model_validator(mode="before")
    @classmethod
    def _whole_numbers(cls, data: Any) -> Any:
        """type int: 8.0 -> 8 (YAML floats), step defaults to 1."""
        if isinstance(data, dict) and data.get("type") == "int":
            data = dict(data)
            for bound in ("low", "high", "step"):
                value = data.get(bound)
                if isinstance(value, float) and value.is_integer():
                    data[bound] = int(value)
            data.setdefault("step", 1)
        return data

    @model_validator(mode="after")
    def _fits_its_key(self) -> "ParamSpec":
        """The range or choices against the config field the key names (errors land on the key)."""
        self._shape()
        if self.key is not None:
            problems, _ = check_key(self.key, self)
            if problems:
                raise ValueError(problems_message(problems))
        return self

    def _shape(self) -> None:
        if self.type == "categorical":
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
            if extra:
                raise ValueError(f"{', '.join(extra)} do not apply to type categorical (it takes choices)")
            if not self.choices:
                raise ValueError("choices must be a non-empty list")
            seen = []
            for choice in self.choices:
                if any(type(choice) is type(s) and choice == s for s in seen):
                    raise ValueError(f"duplicate choice {choice!r}")
                seen.append(choice)
            return
        if self.choices is not None:
            raise ValueError(f"choices do not apply to type {self.type} (it takes low, high, and optionally log or step)")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs low and high")
        if self.type == "int":
            for bound in ("low", "high", "step"):
                value = getattr(self, bound)
                if value is not None and not isinstance(value, int):
                    raise ValueError(f"{bound} ({value}) must be a whole number for type int")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"low ({self.low}) must be > 0 with log: true")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step ({self.step}) must be > 0")
            if self.log and (self.type == "float" or self.step != 1):
                raise ValueError("log and step cannot be combined (Optuna samples a log range continuously)")
            span = (self.high - self.low) / self.step
            if abs(span - round(span)) > 1e-9 * max(1.0, abs(span)):
                raise ValueError(f"high - low ({self.high} - {self.low}) must be a multiple of step ({self.step})")

    def values(self) -> list | None:
        """The finite list of values this dimension takes, or None for a continuous range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(self.low, self.high + 1, self.step))
        if self.step is not None:
            return [self.low + i * self.step for i in range(int(round((self.high - self.low) / self.step)) + 1)]
        return None


class SearchConfig(Section):
    objective: str = Field("downstream/knn_top1", description="the metric Optuna optimises (a DESIGN.md metric name)")
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["tpe", "random", "grid", "cmaes", "gp"] = Field(
        "tpe", description="grid: every combination of a discrete space once (categorical or int dimensions only)")
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    n_trials: int | None = Field(None, ge=1, description="finished or pruned trials in the study, in total (resumes count)")
    timeout_minutes: float | None = Field(
        None, gt=0.0, description="a time budget for one run of the sweep driver, running trials included (stopped: KILLED)")
    trial_timeout_minutes: float | None = Field(
        None, gt=0.0, description="a trial running longer is stopped and recorded FAILED 'timed out after N min'")
    prune_non_finite: bool = Field(
        False, description="a trial whose loss or gradient became nan/inf: PRUNED in the study (default: FAIL)")
    max_concurrent_trials: int = Field(1, ge=1, le=10_000)
    storage: str | None = Field(None, description="null: sqlite:///optuna.db; any SQLAlchemy database URL; journal:PATH")
    study_name: str | None = Field(None, min_length=1, description="defaults to the config's name")
    seed: int = Field(0, ge=0, description="the sampler's seed")
    space: dict[str, ParamSpec] = Field(min_length=1, description="dotted config key -> its range or choices")

    @field_validator("objective")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value in METRICS:
            return value
        prefix = next((p for p in METRIC_PREFIXES if value.startswith(p)), None)
        if prefix is None or not re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*", value[len(prefix):]):
            raise ValueError(f"{value!r} is not a metric sslab records; use one of {', '.join(METRICS)} "
                             f"or a name under {', '.join(p + '...' for p in METRIC_PREFIXES)}")
        return value

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("journal:"):
            if not value[len("journal:"):].strip():
                raise ValueError("journal: needs a file path, e.g. journal:optuna_journal.log")
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
        try:
            make_url(value).get_dialect()
        except (ArgumentError, NoSuchModuleError, ValueError) as error:
            raise ValueError(f"{value!r} is neither journal:PATH nor a database URL SQLAlchemy knows "
                             f"(e.g. sqlite:///optuna.db, postgresql://user@host/db, mysql+pymysql://...): {error}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _name_the_entries(cls, data: Any) -> Any:
        """Tell each space entry its key, so that its own validation checks it against that field."""
        if isinstance(data, dict) and isinstance(data.get("space"), dict):
            data = {**data, "space": {k: {**v, "key": k} if isinstance(v, dict) else v for k, v in data["space"].items()}}
        return data

    @model_validator(mode="after")
    def _whole_block(self) -> "SearchConfig":
        problems = []
        if self.n_trials is None and self.timeout_minutes is None:
            problems.append("n_trials / timeout_minutes: set at least one (a number of trials, a time budget, or both)")
        for key, spec in list(self.space.items()):
            if spec.key != key:  # an entry given as a ParamSpec object rather than a dict
                found, _ = check_key(key, spec)
                problems += [f"space.{key}: {p}" for p in found]
                spec = self.space[key] = spec.model_copy(update={"key": key})
            _, choices = check_key(key, spec)
            if choices is not None:  # the choices as the config field reads them ("1e-4" -> 0.0001)
                self.space[key] = spec.model_copy(update={"choices": choices})
        for key, (parent, allowed) in CONDITIONS.items():
            if key in self.space and parent in self.space and self.space[parent].type == "categorical":
                if not any(c in allowed for c in self.space[parent].choices):
                    problems.append(f"space.{key}: never sampled: it is used only when {parent} is one of "
                                    f"{', '.join(allowed)}, and {parent} takes {self.space[parent].choices}")
        if self.sampler in GRID_SAMPLERS:
            for key, spec in self.space.items():
                if spec.values() is None or spec.type == "float":
                    problems.append(f"space.{key}: sampler grid takes categorical or int dimensions only; "
                                    f"list the values to try as {{type: categorical, choices: [...]}}")
        if self.sampler == "cmaes":
            numeric = [k for k, s in self.space.items() if s.type != "categorical" and _conditional_parent(k, self) is None]
            if len(numeric) < 2:
                problems.append(f"sampler cmaes: needs at least two float or int dimensions that are always sampled "
                                f"(got {numeric or 'none'}); CMA-ES would sample everything at random. Use tpe or gp")
        if problems:
            raise ValueError(problems_message(problems))
        return self

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout_minutes is None else self.timeout_minutes * 60.0


def _conditional_parent(key: str, search: SearchConfig) -> str | None:
    """The sampled key this key depends on, if any."""
    parent = CONDITIONS.get(key, (None,))[0]
    return parent if parent in search.space else None
