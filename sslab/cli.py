"""The `sslab` command: a thin CLI over orchestrator, workloads and pipelines."""
import argparse
import json
import sys

import yaml


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.config.loader import load_config

    config = load_config(args.config, args.set)
    from orchestrator.config.secrets import redact

    print(yaml.safe_dump(redact(config.model_dump(mode="json")), sort_keys=False), end="")  # secrets masked
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from orchestrator.config.loader import load_config

    config = load_config(args.config, args.set)  # a bad config is refused before Ray Train's and torch's imports (4 s)
    from orchestrator.training.run import run_training

    result = run_training(config)
    from mlflow.tracking import MlflowClient

    recorded = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    scores = {k: round(v, 4) for k, v in sorted(recorded.items()) if k.startswith(("downstream/", "repr/", "test/"))}
    print(json.dumps({"run_id": result.run_id, "experiment_id": result.experiment_id, **scores}, indent=2))
    from orchestrator.config.secrets import redact_text

    print(f"MLflow UI: mlflow ui --backend-store-uri {redact_text(config.tracking.uri)}", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.config.loader import ConfigError, load_config
    from orchestrator.jobs.submit import submission_address

    config = load_config(args.config, args.set)
    if config.search is None:
        raise ConfigError(f"{args.config}: search: a sweep needs a search block (objective, sampler, space, n_trials, ...)")
    address = submission_address(args.address)
    if address is not None:
        return submit(address, args, config)
    from orchestrator.sweep.driver_lock import refuse_if_busy

    refuse_if_busy(config)  # a running driver of this study: refused now, not after the driver's slow imports
    from orchestrator.sweep.driver import run_sweep

    result = run_sweep(config)
    summary = {"parent_run_id": result.parent_run_id, "study": result.study_name, "trials": result.counts}
    if result.best:
        number, value, params = result.best
        summary["best"] = {"trial": number, config.search.objective: value, "params": params, "test": result.best_test}
        shown = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items())
        print(f"best trial {number}: {config.search.objective} = {value:.4f} ({shown})", file=sys.stderr)
        if result.best_test:  # the held-out split: reported, never selected on
            print("  its held-out test scores: " + ", ".join(f"{k} = {v:.4f}" for k, v in result.best_test.items()),
                  file=sys.stderr)
    print(json.dumps(summary, indent=2))
    # absolute: the command works from any directory
    from orchestrator.config.secrets import redact_text

    print(f"MLflow UI: mlflow ui --backend-store-uri {redact_text(result.tracking_uri)}", file=sys.stderr)
    return 0


def submit(address: str, args: argparse.Namespace, config) -> int:
    """The sweep as a Ray job on the cluster at `address`: its submission id on stdout, the rest on stderr."""
    from orchestrator.jobs.submit import submit_sweep

    submission = submit_sweep(address, args.config, args.set, config)
    for note in submission.notes:
        print(f"note: {note}", file=sys.stderr)
    print(submission.submission_id)
    print(f"submitted study {submission.study!r} to {address} ({submission.upload_bytes / 2**20:.1f} MiB of working "
          f"directory). Follow it with:\n  sslab status {submission.submission_id} --address {address}\n"
          f"  sslab logs {submission.submission_id} --follow --address {address}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.jobs.watch import status

    print(status(args.address, args.id), end="")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from orchestrator.jobs.watch import logs

    logs(args.address, args.id, args.follow)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from orchestrator.jobs.watch import stop

    print(stop(args.address, args.id, wait_s=0 if args.no_wait else args.wait), end="")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from orchestrator.training.evaluate_checkpoint import evaluate_checkpoint

    scores = evaluate_checkpoint(args.checkpoint, args.train, args.test, knn_k=args.knn_k,
                                 knn_temperature=args.knn_temperature, linear_probe=not args.no_linear_probe,
                                 s3_endpoint_url=args.s3_endpoint_url, precision=args.precision)
    print(json.dumps(scores, indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.tracking.compare import compare_runs, format_rows

    rows = compare_runs(args.tracking_uri, args.experiment, metric=args.metric, top=args.top, direction=args.direction)
    if not rows:
        print(f"experiment {args.experiment!r} has no trial or train runs", file=sys.stderr)
        if args.format == "json":
            print("[]")
        return 0
    print(format_rows(rows, args.format), end="")
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from pipelines.runner import run_pipeline

    return run_pipeline(args.pipeline, args.set, args.run_key)


def cmd_pipeline_status(args: argparse.Namespace) -> int:
    from pipelines.plan import make_plan
    from pipelines.status import format_status, recent_runs

    rows = recent_runs(make_plan(args.pipeline, args.set), keys=args.last)
    print(json.dumps(rows, indent=2) if args.format == "json" else format_status(rows), end="\n" if args.format == "json" else "")
    return 0


def add_pipeline(commands) -> None:
    from pipelines.runner import EXIT_STATUSES

    pipeline = commands.add_parser("pipeline", help="scheduled pipelines: sweep, train, evaluate, register, promote")
    actions = pipeline.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="run a pipeline for one run key (idempotent, locked, resumable)",
                             epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--run-key", default=None, metavar="KEY",
                     help="default: the schedule's latest tick at or before now (UTC), or the UTC date")
    run.set_defaults(func=cmd_pipeline_run)
    status = actions.add_parser("status", help="the recent runs of a pipeline: steps, durations, champion, rejections")
    status.add_argument("--last", type=int, default=10, metavar="N", help="the N most recent run keys")
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.set_defaults(func=cmd_pipeline_status)
    for sub in (run, status):
        sub.add_argument("pipeline", help="pipeline YAML file (e.g. pipelines/nightly.yaml)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override the config it runs (--set train.epochs=2) or, prefixed with pipeline., "
                              "the pipeline file (--set pipeline.promote_margin=0.01); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslab", description="Self-supervised representation learning experiments.")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text, func in (("validate", "check a config and print it fully resolved", cmd_validate),
                                  ("train", "one pretraining run, recorded in MLflow", cmd_train),
                                  ("sweep", "an Optuna search as concurrent Ray trials, one MLflow parent run", cmd_sweep)):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("config", help="YAML config file")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set train.epochs=5 (repeatable)")
        sub.set_defaults(func=func)
        if name == "sweep":
            sub.add_argument("--address", default=None, metavar="http://HEAD:8265",
                             help="submit the sweep as a Ray job to the cluster whose dashboard is there "
                                  "(default: RAY_ADDRESS when it is an http(s) URL; else the sweep runs here)")

    address_help = "the cluster's dashboard (default: RAY_ADDRESS, else http://127.0.0.1:8265)"
    status = commands.add_parser("status", help="a submitted sweep's status, or a table of the sweeps on the cluster")
    status.add_argument("id", nargs="?", default=None, help="the submission id printed by sslab sweep --address")
    status.add_argument("--address", default=None, help=address_help)
    status.set_defaults(func=cmd_status)

    logs = commands.add_parser("logs", help="the logs of a submitted sweep's driver")
    logs.add_argument("id", help="the submission id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--address", default=None, help=address_help)
    logs.set_defaults(func=cmd_logs)

    stop = commands.add_parser("stop", help="stop a submitted sweep (its parent run and running trials end KILLED)")
    stop.add_argument("id", help="the submission id")
    stop.add_argument("--address", default=None, help=address_help)
    stop.add_argument("--wait", type=float, default=180, metavar="SECONDS",
                      help="wait this long for it to end (default: %(default)s)")
    stop.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    stop.set_defaults(func=cmd_stop)

    evaluate = commands.add_parser("eval", help="downstream scores of a saved encoder, as JSON")
    evaluate.add_argument("checkpoint", help="encoder.pt written by sslab train (local path)")
    evaluate.add_argument("--train", required=True, help="labelled data the classifiers fit on (URI; #split=train&... selects a split)")
    evaluate.add_argument("--test", required=True, help="labelled data scored (URI; #split=val&... selects a split)")
    evaluate.add_argument("--knn-k", type=int, default=None, help="default: the value the checkpoint was trained with")
    evaluate.add_argument("--knn-temperature", type=float, default=None)
    evaluate.add_argument("--no-linear-probe", action="store_true")
    evaluate.add_argument("--s3-endpoint-url", default=None)
    evaluate.add_argument("--precision", choices=("recorded", "fp32", "bf16"), default="recorded",
                          help="how the backbone runs: recorded (default: as the run computed its scores, which "
                               "encoder.pt keeps), fp32 (exact) or bf16 (autocast)")
    evaluate.set_defaults(func=cmd_eval)

    compare = commands.add_parser("compare", help="the runs of an MLflow experiment with their params and metrics, best first")
    compare.add_argument("experiment", help="MLflow experiment name (a sweep's name, or a train config's name)")
    compare.add_argument("--metric", default="downstream/knn_top1", help="sort by this metric (default: %(default)s)")
    compare.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                         help="default: minimize for losses, errors, alignment and uniformity; maximize otherwise")
    compare.add_argument("--top", type=int, default=None, metavar="N", help="only the N best runs")
    compare.add_argument("--format", choices=("table", "csv", "json"), default="table")
    compare.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                         help="MLflow store (default: %(default)s, relative to the working directory)")
    compare.set_defaults(func=cmd_compare)
    add_pipeline(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestrator.tracking.compare import CompareError
    from orchestrator.config.loader import ConfigError
    from orchestrator.sweep.coordinator import StudyBusyError
    from orchestrator.jobs.client import JobError
    from workloads.errors import DataError, NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CompareError, FileNotFoundError, JobError, StudyBusyError) as error:
        from orchestrator.config.secrets import redact_text

        print(f"sslab {args.command}: error: {redact_text(str(error))}", file=sys.stderr)  # never a password
        return 2
    except NonFiniteLossError as error:  # a failed run, not bad input: exit 1, the message without a traceback
        run = f" (MLflow run {error.run_id}: FAILED)" if error.run_id else ""
        print(f"sslab {args.command}: the run failed: {error}{run}", file=sys.stderr)
        return 1
    except Exception as error:
        if not service_failure(error):
            raise
        from orchestrator.config.secrets import redact_text

        # a service that went away mid-run, after its bounded retries: the run failed, not the input (exit 1)
        print(f"sslab {args.command}: the run failed: a service stopped answering: "
              f"{redact_text(str(error).strip().splitlines()[-1])[:2000]}", file=sys.stderr)
        return 1


def service_failure(error: BaseException) -> bool:
    """MLflow's or HTTP's error after their retries (a tracking server, an S3 endpoint that went away)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return isinstance(error, (MlflowException, RequestException)) and bool(str(error).strip())


if __name__ == "__main__":
    sys.exit(main())
