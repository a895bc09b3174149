"""Following submitted sweeps: `sslab status`, `sslab logs`, `sslab stop` over Ray's Jobs API."""
import asyncio
import sys
import time
from datetime import datetime

from orchestrator.jobs.client import (
    TERMINAL,
    address_of,
    connect,
    job_errors,
    sslab_jobs,
)


def status(address: str | None, job_id: str | None) -> str:
    """One job's status and message; without an id, a table of the sweeps submitted to the cluster."""
    client, where = connect(address), address_of(address)
    with job_errors(where, job_id):
        if job_id is not None:
            job = client.get_job_info(job_id)
            study = (job.metadata or {}).get("sslab.study")
            lines = [f"{job_id}: {str(job.status)}" + (f"  (study {study})" if study else ""),
                     f"started {stamp(job.start_time)}, ended {stamp(job.end_time)}"]
            if job.message:
                lines.append(job.message.rstrip())
            return "\n".join(lines) + "\n"
        jobs = sslab_jobs(client)
    if not jobs:
        return f"no sweeps submitted to {where}\n"
    rows = [("SUBMISSION ID", "STATUS", "STUDY", "STARTED", "ENDED", "MESSAGE")]
    rows += [(job.submission_id, str(job.status), job.metadata.get("sslab.study", ""), stamp(job.start_time),
              stamp(job.end_time), (job.message or "").splitlines()[0][:60] if job.message else "") for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] + "\n"
                   for row in rows)


def stamp(milliseconds: int | None) -> str:
    return datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M:%S") if milliseconds else "-"


def logs(address: str | None, job_id: str, follow: bool) -> None:
    """Print the job's logs; with follow, keep printing until the job ends."""
    client, where = connect(address), address_of(address)
    with job_errors(where, job_id):
        if not follow:
            sys.stdout.write(client.get_job_logs(job_id))
            return
        client.get_job_info(job_id)  # a missing job is an error here, not an empty stream

        async def tail() -> None:
            async for chunk in client.tail_job_logs(job_id):  # ends when the job ends
                sys.stdout.write(chunk)
                sys.stdout.flush()

        asyncio.run(tail())


def stop(address: str | None, job_id: str, wait_s: float) -> str:
    """Ask Ray to stop the job (its driver gets SIGTERM, SIGKILL after the grace period); wait for it to end."""
    client, where = connect(address), address_of(address)
    with job_errors(where, job_id):
        was_running = client.stop_job(job_id)
        deadline = time.time() + wait_s
        while (job := client.get_job_info(job_id)).status not in TERMINAL and time.time() < deadline:
            time.sleep(1)
    if not was_running:
        return f"{job_id} was not running: {str(job.status)}\n"
    late = "" if job.status in TERMINAL else f" (still stopping after {wait_s:.0f} s)"
    return f"{job_id}: {str(job.status)}{late}\n"
