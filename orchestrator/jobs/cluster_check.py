"""Before a sweep goes to a cluster: does every setting point at storage that every node reaches?

A submitted sweep runs in a temporary copy of the working directory on the cluster, deleted when the
job ends, and its trials run on any node. A relative local path (MLflow's sqlite:///mlflow.db, the
Optuna default sqlite:///optuna.db, storage.path sslab_runs) would land in that temporary copy, on one
node, and be lost. So these are refused, before anything is uploaded; absolute local paths pass with
a note (they work only on a filesystem that every node mounts at that path). Relative data paths are
fine: the data travels with the working directory.

Whether the services answer is not probed here but where it matters, on the cluster: the job's sweep
driver probes them first (orchestrator/services.py, from its preflight) and fails at once naming the
setting. From the submitting machine they may be out of reach by design (a database or S3 endpoint
on the cluster's private network), so a probe here would refuse sweeps that work.
"""
import os
import re

from orchestrator.config.loader import ConfigError
from orchestrator.config.schema import SSLabConfig

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")  # s3://, postgresql+psycopg2://, mlflow-artifacts:/, ...
MLFLOW_NAMED_URIS = ("databricks", "databricks-uc", "uc")  # MLflow URIs without "://"


def where(uri: str) -> str:
    """Where a storage URI points: remote, absolute (a local path), relative (to the working directory) or memory."""
    if uri.startswith("journal:"):  # Optuna's journal file
        uri = "file:" + uri[len("journal:"):]
    if uri.startswith("sqlite:"):
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        return "memory" if path in ("", ":memory:") else "absolute" if path.startswith("/") else "relative"
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        return "absolute" if path.lstrip("/") != path else "relative"  # file:///abs, file:/abs; file:rel
    if SCHEME.match(uri) or uri in MLFLOW_NAMED_URIS:
        return "remote"
    return "absolute" if os.path.isabs(uri) else "relative"


def check_cluster_storage(config: SSLabConfig) -> list[str]:
    """Raise ConfigError naming every setting that only this machine would see; return notes on the
    absolute local paths, which must be on a filesystem every node mounts."""
    problems, notes = [], []
    shared = "an absolute path on a filesystem every node mounts"

    def judge(key: str, value: str, valid: str, shown: str | None = None) -> None:
        kind = where(value)
        shown = shown or repr(value)
        if kind == "relative":
            problems.append(f"{key}: {shown} is a path relative to the working directory; on the cluster that is the "
                            f"job's temporary copy of it, deleted when the job ends. Use {valid}")
        elif kind == "memory":
            problems.append(f"{key}: {shown} is an in-memory database, gone with the process. Use {valid}")
        elif kind == "absolute":
            notes.append(f"{key}: {value!r} is a local path: it must be on a filesystem every node mounts at that path")

    tracking = config.tracking
    judge("tracking.uri", tracking.uri,
          f"an MLflow tracking server (http(s)://host:5000), a database URL (postgresql://..., mysql://...) "
          f"or {shared} (sqlite:////shared/mlflow.db)")
    if tracking.artifact_location is not None:
        judge("tracking.artifact_location", tracking.artifact_location, f"s3://bucket/prefix or {shared}")
    elif where(tracking.uri) == "absolute":  # a local store on shared disk: where do its artifacts go?
        problems.append("tracking.artifact_location: unset, so with a local tracking store a new experiment keeps its "
                        "artifacts in ./mlruns of the job's temporary working directory. Set s3://bucket/prefix or "
                        f"{shared}, or use an MLflow tracking server (it decides where artifacts go)")
    if config.search is not None:
        valid = (f"a database URL (postgresql://..., mysql://...) or {shared} (sqlite:////shared/optuna.db, "
                 f"journal:/shared/optuna.log)")
        if config.search.storage is None:
            judge("search.storage", "sqlite:///optuna.db", valid, shown="null (the default, sqlite:///optuna.db)")
        else:
            judge("search.storage", config.search.storage, valid)
    judge("storage.path", config.storage.path, f"s3://bucket/prefix or {shared}")
    data = config.data.uri.partition("#")[0]
    if where(data) == "absolute":
        notes.append(f"data.uri: {data!r} is a local path: it must exist at that path on every node")
    elif where(data) == "relative" and os.path.normpath(data).split(os.sep)[0] == "..":
        problems.append(f"data.uri: {data!r} lies outside the working directory, and only the working directory "
                        f"travels to the cluster. Move the data inside it, or use s3://... or an absolute shared path")
    if problems:
        raise ConfigError("these settings would not reach the cluster's nodes:\n  " + "\n  ".join(problems))
    return notes
