"""The MLflow Model Registry: a new version per run (register) and the `champion` alias, moved only
when the candidate beats the champion on the same evaluation set (promote)."""
import contextlib
import os

import numpy as np
from mlflow.tracking import MlflowClient

from pipelines.model import EncoderModel, EvaluationSet, knn_top1

ALIAS = "champion"
METRIC = "knn_top1"
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def log_and_register(tracking_uri: str, run_id: str, model: EncoderModel, name: str, image_size: int,
                     tags: dict[str, str]) -> str:
    """Log the model to the run with mlflow.pytorch in the pt2 format (signature, input example) and
    register it as a new version of `name` linked to the run; returns the version."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    example = np.random.default_rng(0).random((2, 3, image_size, image_size), dtype=np.float32)
    with torch.no_grad():
        output = model.eval()(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        # pt2 (torch.export): a graph and tensors, loaded without unpickling code; a pickled nn.Module
        # would run whatever its file says when loaded. The batch dimension stays dynamic (example of 2).
        info = mlflow.pytorch.log_model(model, name="encoder", signature=infer_signature(example, output),
                                        input_example=example, registered_model_name=name,
                                        serialization_format="pt2")
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version


def champion(client: MlflowClient, name: str):
    """The version the alias names, or None (no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def champion_score(tracking_uri: str, name: str, data: EvaluationSet) -> float:
    """The champion, loaded as users load it (models:/NAME@champion), scored on this evaluation set.

    Loaded with MLflow's pickle deserialization off: a pt2 model is checked to hold only tensors and
    plain data before it loads, and a pickled one (an older sslab's, or planted) is refused."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri)
    with no_pickle():
        model = mlflow.pytorch.load_model(f"models:/{name}@{ALIAS}", map_location="cpu")
    return knn_top1(model, data)


@contextlib.contextmanager
def no_pickle():
    """MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false inside the block (MLflow reads it at each load)."""
    saved = os.environ.get(PICKLE_SWITCH)
    os.environ[PICKLE_SWITCH] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PICKLE_SWITCH, None)
        else:
            os.environ[PICKLE_SWITCH] = saved


def gate(candidate: float, incumbent: float | None, margin: float) -> str | None:
    """None when the candidate may become champion, else the reason it may not.

    No champion: it may. margin > 0: MLflow's validate_evaluation_results with a minimum absolute
    gain of `margin`; margin 0: it must be strictly better (a tie keeps the champion)."""
    if incumbent is None:
        return None
    if margin > 0:
        import mlflow
        from mlflow.models import MetricThreshold
        from mlflow.models.evaluation import EvaluationResult
        from mlflow.models.evaluation.validation import ModelValidationFailedException

        try:
            mlflow.validate_evaluation_results({METRIC: MetricThreshold(min_absolute_change=margin, greater_is_better=True)},
                                               EvaluationResult({METRIC: candidate}, {}),
                                               EvaluationResult({METRIC: incumbent}, {}))
            return None
        except ModelValidationFailedException:
            pass
    elif candidate > incumbent:
        return None
    needed = f"by the margin {margin:g}" if margin > 0 else "(a tie keeps the champion)"
    return f"{METRIC} {candidate:.4f} on the evaluation set does not beat the champion's {incumbent:.4f} {needed}"


def promote(client: MlflowClient, name: str, version: str, previous: str | None, reason: str | None) -> None:
    """Move the alias to `version` (tag previous_champion: a rollback is one alias change), or tag the
    version sslab.rejected with the reason."""
    if reason is not None:
        client.set_model_version_tag(name, version, "sslab.rejected", reason)
        return
    if previous is not None:
        client.set_model_version_tag(name, version, "previous_champion", previous)
    client.set_registered_model_alias(name, ALIAS, version)
