"""Join the Ray cluster named by RAY_ADDRESS, or start a local instance (the embedded default); cancel
tasks without tripping Ray."""
import json
import os

import ray

# Ray Train's controller polls its workers every 2 s by default, and a run's start and end each wait
# for a poll. On one machine a short poll is cheap; measured here, the wait after a run's last report
# fell from 5.2-5.5 s to 0.9-1.2 s and a 1-epoch tiny run from 30.7-35.1 s to 25.8-27.7 s (a loaded
# 2-core VM). Ray Train's preemption watcher (one more actor process per run, polling Ray for nodes a
# cloud provider drains) has nothing to watch on one machine.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


# A tracking server or S3 endpoint that goes away during a run is retried by the clients' own retries,
# with exponential back-off, and bounded: MLflow's defaults (7 retries, factor 2, 120 s timeout) wait
# minutes before the run fails. Here: 4 retries sleeping about 0, 2, 4, 8 s (+ up to 1 s jitter each),
# 20 s per request; boto3 (MLflow's S3 artifacts) in its standard mode, 4 attempts in all. The user's
# own values, where set, win. Set in the driver and passed to every Ray worker (the Ray Train
# controller that writes each run's record, the trials).
RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "AWS_RETRY_MODE": "standard",
    "AWS_MAX_ATTEMPTS": "4",
}


def use_retry_env() -> dict[str, str]:
    """RETRY_ENV in this process where unset; returns the values in force (for the workers' env)."""
    for key, value in RETRY_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in RETRY_ENV}


def job_env_keys() -> set[str]:
    """The env_vars a submitted job's runtime_env already sets: Ray refuses to merge a ray.init
    runtime_env that sets them again."""
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not injected:
        return set()
    runtime_env = json.loads(injected).get("runtime_env") or {}
    return set((runtime_env.get("env_vars") or {}).keys())


def use_local_train_env() -> None:
    """LOCAL_TRAIN_ENV for the Ray started next in this process and its children (unless already set)."""
    for key, value in LOCAL_TRAIN_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(worker_logs: bool = True) -> None:
    """worker_logs=False keeps the trials' and Ray Train's logs out of this console (a sweep prints one
    line per trial instead); they stay in Ray's session logs and each run's errors in MLflow."""
    retry_env = use_retry_env()  # also when Ray runs already: this process's own MLflow and S3 calls
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        passed = {key: value for key, value in retry_env.items() if key not in job_env_keys()}
        ray.init(log_to_driver=worker_logs, runtime_env={"env_vars": passed} if passed else None)
    else:
        use_local_train_env()
        # A new local instance ("local": never silently join another one found on this machine), bound
        # to loopback. The dashboard serves the state API that Ray Train uses to watch its controller.
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=worker_logs,
                 _node_ip_address="127.0.0.1", runtime_env={"env_vars": retry_env})


def cancel_unended(refs) -> None:
    """Cancel (force) the tasks of refs that have not ended. Ray's core worker aborts this whole process
    when it cancels a task whose reply it then receives ("Tried to complete task that was not pending",
    seen right after a RayTaskError), so an ended task is never cancelled."""
    refs = list(refs)
    ended, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in set(refs) - set(ended):
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - it ended meanwhile
            pass
