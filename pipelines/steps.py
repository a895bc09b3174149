"""The steps' work. Each takes the plan, the outputs of the steps before it ({step: output}) and its
own step run's id, and returns (output, metrics); the runner records them on the step run."""
import tempfile

from mlflow.tracking import MlflowClient

from orchestrator.tracking.record import git_commit
from pipelines.plan import Plan
from pipelines.registry import champion, champion_score, gate, log_and_register, promote
from pipelines.model import encoder_model, knn_top1, load_evaluation


def sweep(plan: Plan, outputs: dict, run_id: str) -> tuple[dict, dict]:
    """The config's search, as `sslab sweep` runs it, in the run key's own study (resumed if it exists)."""
    from orchestrator.sweep.driver import run_sweep

    result = run_sweep(plan.step_config("sweep"))
    if result.best is None:
        raise RuntimeError(f"the sweep of study {result.study_name!r} has no finished trial: {result.counts}")
    number, value, params = result.best
    trial_run = best_trial_run(plan, result.study_name, number)
    return ({"study": result.study_name, "sweep_run_id": result.parent_run_id, "best_trial": number,
             "best_value": value, "best_params": params, "best_run_id": trial_run, "trials": result.counts},
            {"best/" + plan.config.search.objective: value})


def best_trial_run(plan: Plan, study: str, number: int) -> str:
    client = MlflowClient(plan.tracking_uri)
    experiment = client.get_experiment_by_name(plan.spec.name)
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`sslab.sweep_id` = '{study}' AND tags.`sslab.trial_number` = '{number}' "
                              "AND attributes.status = 'FINISHED'", max_results=1)
    if not runs:
        raise RuntimeError(f"study {study!r}: trial {number} has no FINISHED MLflow run")
    return runs[0].info.run_id


def train(plan: Plan, outputs: dict, run_id: str) -> tuple[dict, dict]:
    """Retrain with the sweep's best params (if there was a sweep) and the step's own overrides."""
    from orchestrator.training.run import run_training

    params = outputs.get("sweep", {}).get("best_params", {})
    tags = {**plan.tags(), "mlflow.parentRunId": run_id}
    result = run_training(plan.step_config("train", params), kind="train", tags=tags, run_name=f"train-{plan.run_key}")
    scores = {k: v for k, v in result.metrics.items() if k.startswith(("downstream/", "test/")) and isinstance(v, float)}
    return {"train_run_id": result.run_id, "params": params}, scores


def encoder_run(outputs: dict) -> str:
    """The run whose encoder.pt the pipeline ships: the train step's, else the sweep's best trial's."""
    return outputs["train"]["train_run_id"] if "train" in outputs else outputs["sweep"]["best_run_id"]


def load_candidate(plan: Plan, outputs: dict, folder: str):
    path = MlflowClient(plan.tracking_uri).download_artifacts(encoder_run(outputs), "encoder.pt", folder)
    return encoder_model(path)


def evaluate(plan: Plan, outputs: dict, run_id: str) -> tuple[dict, dict]:
    """kNN top-1 on the pipeline's fixed evaluation set."""
    with tempfile.TemporaryDirectory() as folder:
        model, metadata = load_candidate(plan, outputs, folder)
    data = load_evaluation(plan.spec.evaluation, metadata.get("image_size"))
    score = knn_top1(model, data)
    return {"knn_top1": score, "encoder_run_id": encoder_run(outputs), "evaluation_digest": data.digest}, \
        {"eval/knn_top1": score}


def register(plan: Plan, outputs: dict, run_id: str) -> tuple[dict, dict]:
    """A new version of the registered model, logged to this step's run, with its scores and lineage as tags."""
    source = encoder_run(outputs)
    client = MlflowClient(plan.tracking_uri)
    trained = client.get_run(source).data
    with tempfile.TemporaryDirectory() as folder:
        model, metadata = load_candidate(plan, outputs, folder)
    evaluated = outputs.get("evaluate", {})
    tags = {"sslab.run_key": plan.run_key, "sslab.pipeline": plan.spec.name, "sslab.source_run": source,
            "data_hash": trained.params.get("data_hash", "unknown"), "code_version": git_commit() or "unknown"}
    if "knn_top1" in evaluated:
        tags |= {"eval/knn_top1": evaluated["knn_top1"], "sslab.evaluation_digest": evaluated["evaluation_digest"]}
    tags |= {k: v for k, v in trained.metrics.items() if k.startswith(("downstream/", "test/"))}
    version = log_and_register(plan.tracking_uri, run_id, model, plan.spec.model, metadata.get("image_size", 32), tags)
    return {"model": plan.spec.model, "version": version}, {}


def promote_step(plan: Plan, outputs: dict, run_id: str) -> tuple[dict, dict]:
    """The champion gate: the alias moves only when the candidate beats the champion on this evaluation set."""
    client = MlflowClient(plan.tracking_uri)
    name, version = plan.spec.model, outputs["register"]["version"]
    candidate = outputs["evaluate"]["knn_top1"]
    current = champion(client, name)
    before = current.version if current is not None else None
    if before == version:  # a resumed run whose promotion was recorded in the registry already
        return {"promoted": True, "version": version, "champion_before": client.get_model_version(
            name, version).tags.get("previous_champion"), "champion_after": version, "reason": None,
            "candidate_knn_top1": candidate, "champion_knn_top1": None}, {}
    incumbent = None
    if current is not None:
        incumbent = champion_score(plan.tracking_uri, name, load_evaluation(
            plan.spec.evaluation, _image_size(plan)))
    reason = gate(candidate, incumbent, plan.spec.promote_margin)
    promote(client, name, version, before, reason)
    output = {"promoted": reason is None, "version": version, "champion_before": before,
              "champion_after": version if reason is None else before, "reason": reason,
              "candidate_knn_top1": candidate, "champion_knn_top1": incumbent}
    return output, {"promote/promoted": float(reason is None)} | (
        {"promote/champion_knn_top1": incumbent} if incumbent is not None else {})


def _image_size(plan: Plan) -> int:
    return plan.config.data.image_size


STEPS = {"sweep": sweep, "train": train, "evaluate": evaluate, "register": register, "promote": promote_step}
