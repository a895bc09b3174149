"""Safe loading: no checkpoint sslab reads can run code. A planted pickle whose unpickling would create a
marker file is refused with a clear error, and the marker never appears."""
import ast
import glob
import os
import subprocess

import pytest
import torch
from conftest import BIN, ROOT

from orchestrator.training.state import STATE_FILE, load_state
from workloads.checkpoint import UnsafeCheckpointError, load_encoder

SAMPLE = "examples/data/cifar10_sample.parquet"


class Hostile:
    """Unpickling this calls os.system: the code an attacker with write access to storage.path would plant."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: str, marker: str, **plain) -> None:
    """A torch.save file like sslab's (a dict of plain values) with one hostile object inside."""
    torch.save({**plain, "payload": Hostile(marker)}, path)


def test_every_torch_load_in_the_project_passes_weights_only_true():
    """A static check over the project's own Python files (not the venv): every torch.load call says
    weights_only=True, so no default and no future edit unpickles code."""
    offenders = []
    for path in glob.glob(f"{ROOT}/**/*.py", recursive=True):
        if "/.venv/" in path or "/build/" in path:
            continue
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = [k for k in node.keywords if k.arg == "weights_only"
                        and isinstance(k.value, ast.Constant) and k.value.value is True]
                if not safe:
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_a_hostile_train_state_in_a_checkpoint_folder_is_refused_and_runs_nothing(tmp_path):
    # where a resumed Ray Train run reads its state: storage.path/<run>/checkpoint_<time>/train_state.pt
    folder = tmp_path / "sslab_runs" / "tiny-1234abcd" / "checkpoint_2026-01-01_00-00-00.000000"
    folder.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    plant(str(folder / STATE_FILE), str(marker), epoch=3, learner={"w": torch.zeros(2)})
    with pytest.raises(UnsafeCheckpointError) as raised:
        load_state(str(folder))
    message = str(raised.value)
    assert str(folder / STATE_FILE) in message and "not a plain tensor checkpoint" in message
    assert "posix.system" in message  # what it asked for, so a person sees it was hostile
    assert not marker.exists(), "unpickling the planted state ran its code"


def test_a_garbage_or_truncated_train_state_is_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / STATE_FILE).write_bytes(b"these are not the weights you are looking for")
    with pytest.raises(UnsafeCheckpointError, match=r"garbage/train_state.pt: not a readable torch checkpoint"):
        load_state(str(garbage))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    torch.save({"epoch": 1, "learner": {"w": torch.ones(1000)}}, truncated / STATE_FILE)
    data = (truncated / STATE_FILE).read_bytes()
    (truncated / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeCheckpointError, match=r"truncated/train_state.pt: not a readable torch checkpoint"):
        load_state(str(truncated))
    assert load_state(str(tmp_path)) is None  # no state file: a fresh start, not an error


def test_a_real_train_state_loads_without_pickle(tmp_path):
    """What sslab's worker saves (learner, optimizer and scheduler state dicts, epoch) loads with
    weights_only=True: nothing in it needs pickle."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=10)
    state = {"learner": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": 2}
    torch.save(state, tmp_path / STATE_FILE)
    loaded = load_state(str(tmp_path))
    assert loaded["epoch"] == 2 and torch.equal(loaded["learner"]["0.weight"], model.state_dict()["0.weight"])
    assert loaded["optimizer"]["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_sslab_eval_of_a_hostile_encoder_exits_2_and_runs_nothing(tmp_path):
    hostile = tmp_path / "encoder.pt"
    marker = tmp_path / "code-ran"
    plant(str(hostile), str(marker), format="sslab.encoder/1", backbone="small_convnet", backbone_kwargs={"width": 8})
    truncated = tmp_path / "truncated.pt"  # a copy cut short
    torch.save({"format": "sslab.encoder/1", "state_dict": {"w": torch.ones(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    for path, expected in ((hostile, "not a plain tensor checkpoint"), (truncated, "not a readable torch checkpoint")):
        out = subprocess.run([os.path.join(BIN, "sslab"), "eval", str(path), "--train", SAMPLE, "--test", SAMPLE],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 2, out.stderr[-3000:]
        assert f"{path}: {expected}" in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert not marker.exists(), "sslab eval ran the planted checkpoint's code"
    with pytest.raises(UnsafeCheckpointError):  # the library call too, for pipelines' encoder_model
        load_encoder(str(hostile))
    assert not marker.exists()


class HostileModule(torch.nn.Module):
    """A model whose pickle runs a command when loaded: what a pickled registry entry could hold."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_the_registry_logs_pt2_and_refuses_a_pickled_champion(tmp_path):
    """log_and_register writes a pt2 export (no pickle) that champion_score loads and scores as the
    in-memory model scores; a pickled model made champion is refused and its code never runs."""
    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from pipelines.model import EncoderModel, EvaluationSet, knn_top1
    from pipelines.registry import ALIAS, champion_score, log_and_register
    from workloads.data import ImageDataset
    from workloads.pretext.registry import build_encoder

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("registry", f"{tmp_path}/artifacts")).info.run_id
    torch.manual_seed(0)
    model = EncoderModel(build_encoder("small_convnet", {"width": 4}, None), (0.5,) * 3, (0.25,) * 3).eval()
    version = log_and_register(uri, run_id, model, "enc", 32, {})
    files = {a.path for a in client.list_artifacts(run_id, "encoder/data")}
    assert "encoder/data/model.pt2" in files and "encoder/data/model.pth" not in files, files
    client.set_registered_model_alias("enc", ALIAS, version)
    images = (torch.rand(70, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.arange(70) % 2
    split = ImageDataset(images, labels, ["a", "b"], "random", "hash")
    data = EvaluationSet(split, split, knn_k=5, knn_temperature=0.1)
    assert champion_score(uri, "enc", data) == pytest.approx(knn_top1(model, data), abs=1e-6)

    marker = tmp_path / "code-ran"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        hostile = mlflow.pytorch.log_model(HostileModule(str(marker)), name="hostile", registered_model_name="enc",
                                           serialization_format="pickle", pip_requirements=["torch"])
    # MLflow may load a model it logs (inferring its requirements runs it): the load that matters is ours
    marker.unlink(missing_ok=True)
    client.set_registered_model_alias("enc", ALIAS, str(hostile.registered_model_version))
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
        champion_score(uri, "enc", data)
    assert not marker.exists(), "loading the pickled champion ran its code"
