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


def cmd_eval(args: argparse.Namespace) -> int:
    from orchestrator.evaluate_checkpoint import evaluate_checkpoint

    scores = evaluate_checkpoint(args.checkpoint, args.train, args.test, knn_k=args.knn_k,
                                 knn_temperature=args.knn_temperature, linear_probe=not args.no_linear_probe,
                                 s3_endpoint_url=args.s3_endpoint_url)
    print(json.dumps(scores, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslab", description="Self-supervised representation learning experiments.")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text, func in (("validate", "check a config and print it fully resolved", cmd_validate),
                                  ("train", "one pretraining run, recorded in MLflow", cmd_train)):
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
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestrator.config_loader import ConfigError
    from workloads.errors import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as error:
        print(f"sslab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
