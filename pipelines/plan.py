"""A pipeline run's plan: its spec, its run key and the configs of its steps, all validated before any work.

The run key gives one pipeline run per schedule tick (Dagster's run_key); `{run_key}` and `{date}` in
data URIs name dated partitions."""
import copy
import datetime as dt
import os
import re
from dataclasses import dataclass, field

from pydantic import ValidationError

from orchestrator.config.loader import ConfigError, apply_override, format_errors, load_config, read_yaml
from orchestrator.config.local_paths import local_store_path, with_absolute_paths
from orchestrator.config.schema import SSLabConfig
from orchestrator.config.search_checks import apply_params
from pipelines.spec import PipelineSpec, load_pipeline, split_overrides

KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")  # goes into tags, MLflow filters, the study name


def default_run_key(schedule: str | None, now: dt.datetime | None = None) -> str:
    """The schedule's latest tick at or before now (UTC), e.g. 2025-01-31T03:00Z; without a schedule,
    the UTC date, e.g. 2025-01-31."""
    from croniter import croniter

    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    if schedule is None:
        return now.strftime("%Y-%m-%d")
    minute = now.replace(second=0, microsecond=0)
    tick = minute if croniter.match(schedule, minute) else croniter(schedule, now).get_prev(dt.datetime)
    return tick.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def check_run_key(key: str) -> str:
    if not KEY.match(key):
        raise ConfigError(f"--run-key {key!r}: use 1-64 letters, digits and . _ - : (e.g. 2025-01-31 or 2025-01-31T03:00Z)")
    return key


def key_date(key: str) -> str:
    """The date a run key names (its first 10 characters when they are one), else today's UTC date."""
    try:
        return dt.date.fromisoformat(key[:10]).isoformat()
    except ValueError:
        return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")


def fill(uri: str | None, key: str) -> str | None:
    """`{run_key}` and `{date}` in a URI; nothing else is a template (other braces stay as they are)."""
    if uri is None:
        return None
    return uri.replace("{run_key}", key).replace("{date}", key_date(key))


@dataclass
class Plan:
    path: str
    spec: PipelineSpec
    run_key: str
    config: SSLabConfig  # the config the pipeline runs, its paths absolute
    step_sets: dict[str, list[str]] = field(default_factory=dict)

    @property
    def study_name(self) -> str:
        return f"{self.spec.name}-{self.run_key}"

    @property
    def tracking_uri(self) -> str:
        return self.config.tracking.uri

    def tags(self, step: str | None = None) -> dict[str, str]:
        tags = {"sslab.pipeline": self.spec.name, "sslab.run_key": self.run_key}
        return tags | ({"sslab.step": step} if step else {})

    def lock_path(self) -> str:
        folder = self.spec.lock_dir
        if folder is None:
            store = local_store_path(self.tracking_uri)
            folder = os.path.dirname(store) if store and store != ":memory:" else os.path.join(
                os.environ.get("TMPDIR", "/tmp"), "sslab-locks")
        return os.path.join(folder, f"{self.spec.name}.pipeline.lock")

    def lease_url(self) -> str | None:
        """Where the lock across hosts lives: the pipeline's lease_database, else the study's database
        when it is a server's (a SQLite or journal file is one host's, which the file lock covers)."""
        if self.spec.lease_database is not None:
            return None if self.spec.lease_database == "none" else self.spec.lease_database
        storage = self.config.search.storage if self.config.search is not None else None
        return storage if storage and "://" in storage and not storage.startswith("sqlite") else None

    def step_config(self, step: str, params: dict | None = None) -> SSLabConfig:
        """The run config with a sweep's best params (train) and the step's own overrides."""
        raw = apply_params(self.config.model_dump(mode="json"), params or {})
        for assignment in self.step_sets.get(step, []):
            apply_override(raw, assignment)
        if step != "sweep":
            raw["search"] = None
        try:
            return SSLabConfig.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(f"steps: {step}: " + format_errors(self.path, error, {}, self.step_sets.get(step, []))) from None


def make_plan(path: str, overrides: list[str] = (), run_key: str | None = None) -> Plan:
    pipeline_sets, config_sets = split_overrides(list(overrides))
    spec = load_pipeline(path, pipeline_sets)
    key = check_run_key(run_key) if run_key else default_run_key(spec.schedule)
    sets = list(spec.set) + config_sets
    sets += _templated(spec.config, sets, key)
    sets += [f"tracking.experiment={spec.name}"]  # one experiment per pipeline
    raw, _ = read_yaml(spec.config)
    if spec.step("sweep") and raw.get("search") is not None:
        sets += [f"search.study_name={spec.name}-{key}"]  # the run key's own study: resumed, never shared
    config = load_config(spec.config, sets)
    if spec.step("sweep") and config.search is None:
        raise ConfigError(f"{path}: steps: sweep: the config {spec.config} has no search block")
    spec.evaluation.train, spec.evaluation.test = fill(spec.evaluation.train, key), fill(spec.evaluation.test, key)
    plan = Plan(os.path.abspath(path), spec, key, with_absolute_paths(config),
                {step.step: list(step.set) for step in spec.steps})
    for step in ("sweep", "train"):
        if spec.step(step):
            plan.step_config(step)  # its overrides are checked now, not after the sweep
    return plan


def _templated(config_path: str, sets: list[str], key: str) -> list[str]:
    """Overrides that fill the run key into data.uri and data.test_uri where they hold a template."""
    raw, _ = read_yaml(config_path)
    raw = copy.deepcopy(raw)
    for assignment in sets:
        apply_override(raw, assignment)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    return [f"data.{name}={fill(data[name], key)}" for name in ("uri", "test_uri")
            if isinstance(data.get(name), str) and fill(data[name], key) != data[name]]
