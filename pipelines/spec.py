"""The pipeline file: what a scheduled pipeline runs, checked completely before any work.

    name: nightly                      # one MLflow experiment and one lock per pipeline
    config: ../examples/quickstart.yaml  # relative to this file
    set: [train.epochs=1]              # --set overrides of the config
    schedule: "0 3 * * *"              # optional cron expression (UTC): gives the default run key
    model: sslab-nightly               # the registered model
    promote_margin: 0.0                # the candidate must beat the champion by more than this
    evaluation:                        # the fixed evaluation set, the same for every run
      train: data.parquet#split=train&val_fraction=0.2&test_fraction=0.1&seed=0   # the kNN's memory
      test: data.parquet#split=test&val_fraction=0.2&test_fraction=0.1&seed=0    # what is scored
    steps: [sweep, {train: {set: [train.epochs=2]}}, evaluate, register, promote]
    lease_database: postgresql://...   # the lock across hosts (default: the study's server database)
    lease_seconds: 60                  # a dead host's lock is taken over once this has passed

Errors name the key and its file position (orchestrator.config.loader's machinery); exit status 2.
"""
import os
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.config.loader import ConfigError, apply_override, format_errors, read_yaml
from orchestrator.config.sections import Section

STEPS = ("sweep", "train", "evaluate", "register", "promote")
NAME = r"^[A-Za-z0-9_.\-]+$"


class Evaluation(Section):
    train: str = Field(description="labelled images the kNN remembers (a data URI; #split=... selects a split)")
    test: str = Field(description="labelled images scored (a data URI; #split=... selects a split)")
    knn_k: int = Field(200, ge=1)
    knn_temperature: float = Field(0.1, gt=0.0)
    s3_endpoint_url: str | None = None


class Step(Section):
    step: Literal[STEPS]
    set: list[str] = Field(default_factory=list, description="sweep, train: --set overrides for this step only")

    @model_validator(mode="after")
    def _overrides_where_used(self) -> "Step":
        if self.set and self.step not in ("sweep", "train"):
            raise ValueError(f"step {self.step!r} takes no overrides (only sweep and train do)")
        return self


class PipelineSpec(Section):
    name: str = Field(min_length=1, pattern=NAME)
    config: str = Field(description="the sslab config it runs, relative to the pipeline file")
    set: list[str] = Field(default_factory=list, description="--set overrides of the config")
    schedule: str | None = Field(None, description="a cron expression (UTC); the default run key is its latest tick")
    model: str = Field(min_length=1, pattern=NAME, description="the registered model's name")
    promote_margin: float = Field(0.0, ge=0.0, le=1.0, description="kNN top-1 the candidate must gain over the champion")
    evaluation: Evaluation
    steps: list[Step] = Field(min_length=1)
    lock_dir: str | None = Field(None, description="folder of the lock file (default: beside a SQLite tracking "
                                                   "store, else the system's temp folder)")
    lease_database: str | None = Field(None, description="a database URL (SQLAlchemy) every host reaches, for the "
                                       "lock across hosts (default: the config's search.storage when it is a "
                                       "server database; 'none': the file lock only)")
    lease_seconds: float = Field(60.0, ge=3.0, le=3600.0, description="a dead host's lock is taken over after this")

    @field_validator("steps", mode="before")
    @classmethod
    def _short_forms(cls, steps):
        """`- sweep` and `- {train: {set: [...]}}` are the short forms of {step: ..., set: [...]}."""
        if not isinstance(steps, list):
            return steps
        out = []
        for item in steps:
            if isinstance(item, str):
                item = {"step": item}
            elif isinstance(item, dict) and len(item) == 1 and "step" not in item:
                (step, options), = item.items()
                item = {"step": step, **(options or {})} if isinstance(options, dict) or options is None else item
            out.append(item)
        return out

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r} (e.g. '0 3 * * *': 03:00 UTC every day)")
        return value

    @model_validator(mode="after")
    def _steps_in_order(self) -> "PipelineSpec":
        names = [step.step for step in self.steps]
        if len(set(names)) != len(names) or names != sorted(names, key=STEPS.index):
            raise ValueError(f"steps {names}: each at most once, in the order {', '.join(STEPS)}")
        needs = {"evaluate": ("an encoder", {"sweep", "train"}), "register": ("an encoder", {"sweep", "train"}),
                 "promote": ("a registered, evaluated version", {"register"})}
        for name, (what, sources) in needs.items():
            if name in names and not sources & set(names[:names.index(name)]):
                raise ValueError(f"step {name!r} needs {what}: put {' or '.join(sorted(sources))} before it")
        if "promote" in names and "evaluate" not in names:
            raise ValueError("step 'promote' compares the evaluation step's score: add evaluate before register")
        return self

    def step(self, name: str) -> Step | None:
        return next((step for step in self.steps if step.step == name), None)


PIPELINE_PREFIX = "pipeline."


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """--set pipeline.KEY=V overrides the pipeline file; any other --set the config it runs."""
    mine = [o[len(PIPELINE_PREFIX):] for o in overrides if o.strip().startswith(PIPELINE_PREFIX)]
    return mine, [o for o in overrides if not o.strip().startswith(PIPELINE_PREFIX)]


def load_pipeline(path: str, overrides: list[str] = ()) -> PipelineSpec:
    raw, positions = read_yaml(path, what="pipeline")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_errors(path, error, positions, list(overrides), schema=PipelineSpec)) from None
    folder = os.path.dirname(os.path.abspath(path))
    spec.config = os.path.normpath(os.path.join(folder, spec.config))
    if spec.lease_database is not None and spec.lease_database != "none":
        try:
            import sqlalchemy

            sqlalchemy.engine.make_url(spec.lease_database)
        except Exception:  # noqa: BLE001 - any parse failure is the same bad input
            raise ConfigError(f"{path}: lease_database: not a database URL (e.g. postgresql://host/db, "
                              f"sqlite:///path.db, or none)") from None
    if spec.lock_dir is not None:
        spec.lock_dir = os.path.normpath(os.path.join(folder, spec.lock_dir))
    if not os.path.isfile(spec.config):
        raise ConfigError(f"{path}: config: no such file: {spec.config!r} (relative to the pipeline file)")
    return spec
