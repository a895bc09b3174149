"""The study's one coordinator on a cluster: a named actor, so a second driver of the same study stops at once.

The StudyCoordinator actor is the study's one writer. Its name is derived from the study name and
its storage, in the namespace "sslab"; the GCS registers a name atomically, so of two drivers of
one study (the same sweep submitted twice) the second fails to create it, before it has opened the
study or MLflow. The actor is not detached: it dies with the driver that owns it (stopped, killed,
or its node lost), and the name is free again for the next run, which resumes the study.
"""
import hashlib
import time

from orchestrator.config.local_paths import DEFAULT_STUDY_STORAGE
from orchestrator.config.schema import SSLabConfig

NAMESPACE = "sslab"
RELEASE_WAIT_S = 10  # a driver that just died: the GCS frees its actor's name within about a second


class StudyBusyError(RuntimeError):
    """Another driver runs this study."""


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
