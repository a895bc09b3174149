"""`sslab pipeline status`: the recent run keys of a pipeline, each step's state and duration, the
champion before and after, and the reason for a rejection."""
import json

from pipelines.plan import Plan
from pipelines.record import PipelineRecord
from pipelines.spec import STEPS


def recent_runs(plan: Plan, keys: int = 10) -> list[dict]:
    """Newest run key first: {run_key, started, duration_s, steps: {step: state}, champion_before, ...}."""
    by_key: dict[str, list] = {}
    for run in PipelineRecord(plan).runs(run_key="*", max_results=5000):
        by_key.setdefault(run.data.tags["sslab.run_key"], []).append(run)
    rows = []
    for key, runs in by_key.items():
        latest = {}
        for run in sorted(runs, key=lambda r: r.info.start_time):  # the last run of each step tells its state
            latest[run.data.tags.get("sslab.step")] = run
        ends = [r.info.end_time for r in runs if r.info.end_time]
        start = min(r.info.start_time for r in runs)
        promote = latest.get("promote")
        outcome = json.loads(promote.data.tags.get("sslab.output", "{}")) if promote is not None else {}
        rows.append({"run_key": key, "started": start,
                     "duration_s": round((max(ends) - start) / 1000) if ends else None,
                     "steps": {step: latest[step].info.status for step in STEPS if step in latest},
                     "champion_before": outcome.get("champion_before"), "champion_after": outcome.get("champion_after"),
                     "rejected": outcome.get("reason")})
    return sorted(rows, key=lambda row: row["started"], reverse=True)[:keys]


def format_status(rows: list[dict]) -> str:
    if not rows:
        return "no runs of this pipeline yet\n"
    lines = [f"{'run key':<20} {'duration':>9}  {'champion':<9}  steps / rejection"]
    for row in rows:
        duration = f"{row['duration_s']} s" if row["duration_s"] is not None else "-"
        champion = f"{row['champion_before'] or '-'}->{row['champion_after'] or '-'}"
        steps = " ".join(f"{step}:{state}" for step, state in row["steps"].items())
        lines.append(f"{row['run_key']:<20} {duration:>9}  {champion:<9}  {steps}")
        if row["rejected"]:
            lines.append(f"{'':<20} {'':>9}  {'':<9}  rejected: {row['rejected']}")
    return "\n".join(lines) + "\n"
