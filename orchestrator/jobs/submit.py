"""`sslab sweep CONFIG --address http://HEAD:8265`: the sweep driver submitted as a Ray job.

Everything that can be refused here is refused before anything is uploaded: a secret written out in
an override or in the config file (both travel and are shown by the dashboard: secrets go by
environment variable name, ${NAME}, expanded on the cluster), storage that the cluster's nodes would
not reach (cluster_check), a config or data file that would not travel, a working directory too
large (job_upload), and a job of the same study still pending or running.
The job's entrypoint runs the same `sslab sweep CONFIG --set ...` on the cluster, where Ray sets
RAY_ADDRESS to the cluster for the driver, so it joins the cluster instead of submitting again.
"""
import os
import re
import shlex
import uuid
from dataclasses import dataclass

from orchestrator.config.loader import ConfigError, read_yaml
from orchestrator.config.local_paths import with_absolute_paths
from orchestrator.config.schema import SSLabConfig
from orchestrator.config.secrets import how_to_pass, literal_secrets, override_secret
from orchestrator.jobs.client import JobError, connect, job_errors, sslab_jobs
from orchestrator.jobs.cluster_check import check_cluster_storage
from orchestrator.jobs.upload import check_upload, runtime_env
from orchestrator.sweep.coordinator import study_key

ACTIVE = ("PENDING", "RUNNING")
# `sslab stop` (Ray's stop_job) sends the driver SIGTERM, then SIGKILL after this many seconds (Ray's
# default is 3): the stopping driver needs the time to cancel its trials and leave them and the parent
# run KILLED (tens of seconds on a busy machine; a SIGKILL halfway leaves the parent run RUNNING).
STOP_GRACE_S = 120


@dataclass
class Submission:
    submission_id: str
    study: str
    notes: list[str]
    upload_bytes: int


def submission_address(address: str | None) -> str | None:
    """Where to submit: --address, else RAY_ADDRESS when it is a dashboard URL; None runs the sweep here."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else None


def refuse_literal_secrets(config_path: str, overrides: list[str]) -> None:
    """A submitted sweep's overrides travel in the job's entrypoint and its config file in the uploaded
    working directory; the dashboard shows both to anyone who can open it. A secret written out in
    either (a password in a URL, a credential-named key's value) is refused, naming the key, never
    the value; a ${NAME} reference is what travels instead."""
    problems = [f"--set {key}: holds a secret written out (it would travel in the Ray job's entrypoint, which the "
                f"dashboard shows); {how_to_pass(key)}" for key in filter(None, map(override_secret, overrides))]
    raw, _ = read_yaml(config_path)
    problems += [f"{config_path}: {key}: holds a secret written out (the config file travels to the cluster in the "
                 f"job's working directory, which the cluster keeps); {how_to_pass(key)}" for key in literal_secrets(raw)]
    if problems:
        raise ConfigError("not submitted: " + "\n  ".join(problems))


def submit_sweep(address: str, config_path: str, overrides: list[str], config: SSLabConfig) -> Submission:
    workdir = os.getcwd()
    refuse_literal_secrets(config_path, overrides)
    notes = check_cluster_storage(config)
    config_file = os.path.relpath(os.path.abspath(config_path), workdir)
    if config_file.split(os.sep)[0] == "..":
        raise JobError(f"{config_path}: the config must be inside the working directory {workdir}, which is what "
                       f"travels to the cluster; run sslab from a folder that contains it")
    needed = [config_file]
    data = config.data.uri.partition("#")[0]
    if "://" not in data and not os.path.isabs(data):
        needed.append(os.path.normpath(data))
    env = runtime_env(workdir, {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)})
    upload_bytes = check_upload(workdir, env["excludes"], needed)

    study = config.search.study_name or config.name
    key = study_key(study, with_absolute_paths(config).search.storage)
    client = connect(address)
    with job_errors(address):
        running = [job for job in sslab_jobs(client, study) if job.status in ACTIVE
                   and job.metadata.get("sslab.study_key") == key]
        if running:
            raise JobError(f"study {study!r} already has a driver: job {running[0].submission_id} is "
                           f"{str(running[0].status)}. Stop it first (sslab stop {running[0].submission_id}) or wait for it")
        submission_id = f"sslab-{re.sub(r'[^A-Za-z0-9_.-]', '_', study)[:40]}-{uuid.uuid4().hex[:8]}"
        command = ["python", "-m", "sslab", "sweep", config_file]
        for override in overrides:
            command += ["--set", override]
        client.submit_job(entrypoint=shlex.join(command), runtime_env=env, submission_id=submission_id,
                          metadata={"sslab": "sweep", "sslab.study": study, "sslab.study_key": key,
                                    "sslab.config": config_file})
    return Submission(submission_id, study, notes, upload_bytes)
