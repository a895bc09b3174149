"""The study's one coordinator on a cluster: a named actor, so a second driver of the same study stops at once.

The StudyCoordinator actor is the study's one writer. Its name is derived from the study name and
its storage, in the namespace "sslab"; the GCS registers a name atomically, so of two drivers of
one study (the same sweep submitted twice) the second fails to create it, before it has opened the
study or MLflow. The actor is not detached: it dies with the driver that owns it (stopped, killed,
or its node lost), and the name is free again for the next run, which resumes the study.

This guard sees one Ray cluster. Two local drivers start a Ray instance each, and drivers on other
clusters may share the study's database: the driver's lease on the study (sweep/driver_lock.py),
taken before this actor, refuses those. Both apply.

The driver calls the actor through call(), which bounds every wait: an actor that does not answer
in CALL_TIMEOUT_S (hung, or its node lost) is an error that says so, not a driver blocked forever.
"""
import hashlib
import time

from orchestrator.config.local_paths import DEFAULT_STUDY_STORAGE
from orchestrator.config.schema import SSLabConfig

NAMESPACE = "sslab"
RELEASE_WAIT_S = 10  # a driver that just died: the GCS frees its actor's name within about a second
# The longest any call waits for the actor. Its slowest call opens the study (the first one, while the
# actor starts) or writes it under another writer's lock (SQLite's busy timeout is 60 s, study.py).
CALL_TIMEOUT_S = 180


class StudyBusyError(RuntimeError):
    """Another driver runs this study."""


class CoordinatorTimeout(RuntimeError):
    """The study's coordinator did not answer in time."""


def call(coordinator, method: str, *args, timeout: float = CALL_TIMEOUT_S):
    """coordinator.method(*args), waited for at most `timeout` seconds."""
    import ray

    try:
        return ray.get(getattr(coordinator, method).remote(*args), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise CoordinatorTimeout(
            f"the study's coordinator actor did not answer {method}() within {timeout:.0f} s: it is hung (e.g. "
            f"on a locked study database) or its node is lost; the driver stops. Its log is in Ray's session "
            f"logs (worker-*.err of the StudyCoordinator actor)") from None


def study_key(study_name: str, storage: str) -> str:
    """The study's identity on a cluster: its name and a digest of its storage URL (which may hold a password)."""
    return f"{study_name}@{hashlib.sha256(storage.encode()).hexdigest()[:12]}"


def start_coordinator(config: SSLabConfig, study_name: str):
    """The StudyCoordinator actor of this study (config with absolute paths, as run_sweep has it)."""
    import ray  # here, not at the top: the CLI imports StudyBusyError without paying for Ray
    from ray.exceptions import ActorAlreadyExistsError

    from orchestrator.sweep.study_actor import StudyCoordinator

    search = config.search
    name = "study:" + study_key(study_name, search.storage or DEFAULT_STUDY_STORAGE)
    deadline = time.time() + RELEASE_WAIT_S
    while True:
        try:
            return ray.remote(StudyCoordinator).options(num_cpus=0, name=name, namespace=NAMESPACE).remote(
                search.model_dump(mode="json"), study_name, config.model_dump(mode="json"))
        except ActorAlreadyExistsError:
            if time.time() > deadline:
                raise StudyBusyError(f"another driver runs study {study_name!r} ({holder(name)}); this one stops "
                                     f"without touching the study or MLflow. Stop that one first (sslab stop ID) "
                                     f"or wait for it to end") from None
            time.sleep(1)


def holder(name: str) -> str:
    """Which driver holds the coordinator's name: its Ray job submission id where there is one (best effort)."""
    try:
        from ray.util.state import list_actors, list_jobs

        actors = list_actors(filters=[("name", "=", name), ("state", "!=", "DEAD")], raise_on_missing_output=False)
        job_id = actors[0].job_id
        jobs = list_jobs(filters=[("job_id", "=", job_id)], raise_on_missing_output=False)
        submission = jobs[0].submission_id if jobs else None
        return f"submission {submission}" if submission else f"Ray job {job_id}, not a submitted job"
    except Exception as error:  # the state API is a convenience here: the refusal stands without it
        return f"its submission id is unknown: {type(error).__name__}"
