"""`sslab compare`: the runs of one MLflow experiment, their params and metrics, best first.

Read through MLflow's search API: trial runs when the experiment has any (a sweep), else the
runs of `sslab train`; never the sweep's parent run. Sorting and `--top` are MLflow's own
`order_by` and `max_results`, which put runs without the metric last.
"""
import csv
import io
import json
import os

from orchestrator.config.local_paths import absolute_store_url, local_store_path

DEFAULT_METRIC = "downstream/knn_top1"
CONTRACT_PARAMS = ("workload", "loss", "temperature", "margin", "batch_size", "lr", "epochs", "backbone", "seed")
CONTRACT_METRICS = ("downstream/knn_top1", "downstream/linear_top1", "repr/alignment", "repr/uniformity", "train/loss")
# Metrics where lower is better: losses and errors, and Wang & Isola's alignment and uniformity.
_MINIMIZED_WORDS = ("loss", "error", "err", "alignment", "uniformity")
_PAGE = 1000


class CompareError(ValueError):
    """An experiment or store that cannot be compared; the CLI reports it with exit status 2."""


def looks_minimized(metric: str) -> bool:
    last = metric.lower().rsplit("/", 1)[-1]
    return any(word in last for word in _MINIMIZED_WORDS)


def _quoted(key: str) -> str:
    return f"`{key}`"


def compare_runs(tracking_uri: str, experiment: str, metric: str = DEFAULT_METRIC, top: int | None = None,
                 direction: str | None = None) -> list[dict]:
    """One dict per run, sorted by `metric` (best first), at most `top` of them."""
    from mlflow.tracking import MlflowClient

    if direction not in (None, "maximize", "minimize"):
        raise CompareError(f"direction must be 'maximize' or 'minimize', not {direction!r}")
    if top is not None and top < 1:
        raise CompareError(f"--top must be at least 1, not {top}")
    uri = absolute_store_url(tracking_uri)  # relative to the working directory
    path = local_store_path(uri)
    if path is not None and not os.path.exists(path):  # never create an empty store
        raise CompareError(f"no MLflow store at {path} (--tracking-uri {tracking_uri})")
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        listed = ", ".join(repr(n) for n in names) if names else "(none)"
        raise CompareError(f"no experiment named {experiment!r} in {tracking_uri}; experiments: {listed}")

    kind = "trial"
    probe = client.search_runs([found.experiment_id], filter_string="tags.`sslab.kind` = 'trial'", max_results=1)
    if not probe:
        kind = "train"
    direction = direction or ("minimize" if looks_minimized(metric) else "maximize")
    order = "DESC" if direction == "maximize" else "ASC"
    runs, token = [], None
    while True:
        limit = _PAGE if top is None else min(_PAGE, top - len(runs))
        page = client.search_runs([found.experiment_id], filter_string=f"tags.`sslab.kind` = '{kind}'",
                                  order_by=[f"metrics.{_quoted(metric)} {order}", "attributes.start_time ASC"],
                                  max_results=limit, page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (top is not None and len(runs) >= top):
            break
    metrics = list(CONTRACT_METRICS) + ([metric] if metric not in CONTRACT_METRICS else [])
    return [_row(run, metrics) for run in runs]


def _row(run, metrics: list[str]) -> dict:
    tags, params, values = run.data.tags, run.data.params, run.data.metrics
    status = "pruned" if tags.get("sslab.pruned", "").lower() == "true" else run.info.status
    row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": status}
    if "sslab.trial_number" in tags:
        number = tags["sslab.trial_number"]
        row["trial"] = int(number) if number.lstrip("-").isdigit() else number
    row.update({name: params.get(name) for name in CONTRACT_PARAMS})
    row.update({name: values.get(name) for name in metrics})
    return row


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    if "trial" in columns:  # after status, even when the first rows have no trial number
        columns.remove("trial")
        columns.insert(columns.index("status") + 1, "trial")
    return columns


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def format_rows(rows: list[dict], fmt: str = "table") -> str:
    """table: aligned plain text (short run ids); csv: a header and one line per run; json: a list."""
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    columns = _columns(rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows)
        return out.getvalue()
    if fmt != "table":
        raise CompareError(f"format must be table, csv or json, not {fmt!r}")
    cells = [[_cell(row.get(c)) if c != "run_id" else row[c][:8] for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row.get(c)) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(v) for v in cells]) + "\n"


def _is_number(value) -> bool:
    if value is None or isinstance(value, (int, float)):
        return True
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
