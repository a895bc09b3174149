"""The `sslab` command: a thin CLI over orchestrator, workloads and pipelines."""
import argparse
import json
import sys

import yaml


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.config_loader import load_config

    config = load_config(args.config, args.set)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from orchestrator.config_loader import load_config
    from orchestrator.train_run import run_training

    config = load_config(args.config, args.set)
    result = run_training(config)
    from mlflow.tracking import MlflowClient

    recorded = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    scores = {k: round(v, 4) for k, v in sorted(recorded.items()) if k.startswith(("downstream/", "repr/"))}
    print(json.dumps({"run_id": result.run_id, "experiment_id": result.experiment_id, **scores}, indent=2))
    print(f"MLflow UI: mlflow ui --backend-store-uri {config.tracking.uri}", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from orchestrator.config_loader import ConfigError, load_config
    from orchestrator.sweep import run_sweep

    config = load_config(args.config, args.set)
    if config.search is None:
        raise ConfigError(f"{args.config}: search: a sweep needs a search block (objective, sampler, space, n_trials, ...)")
    result = run_sweep(config)
    summary = {"parent_run_id": result.parent_run_id, "study": result.study_name, "trials": result.counts}
    if result.best:
        number, value, params = result.best
        summary["best"] = {"trial": number, config.search.objective: value, "params": params}
    print(json.dumps(summary, indent=2))
    print(f"MLflow UI: mlflow ui --backend-store-uri {config.tracking.uri}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from orchestrator.evaluate_checkpoint import evaluate_checkpoint

    scores = evaluate_checkpoint(args.checkpoint, args.train, args.test, knn_k=args.knn_k,
                                 knn_temperature=args.knn_temperature, linear_probe=not args.no_linear_probe,
                                 s3_endpoint_url=args.s3_endpoint_url)
    print(json.dumps(scores, indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.compare import compare_runs, format_rows

    rows = compare_runs(args.tracking_uri, args.experiment, metric=args.metric, top=args.top, direction=args.direction)
    if not rows:
        print(f"experiment {args.experiment!r} has no trial or train runs", file=sys.stderr)
        if args.format == "json":
            print("[]")
        return 0
    print(format_rows(rows, args.format), end="")
    return 0


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

    evaluate = commands.add_parser("eval", help="downstream scores of a saved encoder, as JSON")
    evaluate.add_argument("checkpoint", help="encoder.pt written by sslab train (local path)")
    evaluate.add_argument("--train", required=True, help="labelled data the classifiers fit on (URI; #split=train&... selects a split)")
    evaluate.add_argument("--test", required=True, help="labelled data scored (URI; #split=val&... selects a split)")
    evaluate.add_argument("--knn-k", type=int, default=None, help="default: the value the checkpoint was trained with")
    evaluate.add_argument("--knn-temperature", type=float, default=None)
    evaluate.add_argument("--no-linear-probe", action="store_true")
    evaluate.add_argument("--s3-endpoint-url", default=None)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestrator.compare import CompareError
    from orchestrator.config_loader import ConfigError
    from workloads.errors import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CompareError, FileNotFoundError) as error:
        print(f"sslab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
