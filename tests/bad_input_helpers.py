"""What the bad-input catalogue's tests share (tests/test_bad_inputs*.py; docs/reliability.md, "Bad inputs"):
a tiny config and data set in a fresh working directory, and the assertions every case makes."""
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, SAMPLE

from sslab.cli import main

CONFIG = {
    "name": "bad", "seed": 0,
    "data": {"uri": "data.parquet", "val_fraction": 0.2, "test_fraction": 0.1},
    "model": {"width": 8, "projection_hidden_dim": 32, "projection_dim": 16},
    "train": {"epochs": 1, "batch_size": 32, "progress": False},
    "eval": {"knn_k": 5, "linear_probe": False, "embedding_map_points": 20},
}
SEARCH = {"objective": "downstream/knn_top1", "sampler": "random", "pruner": "none", "n_trials": 1,
          "space": {"workload.temperature": {"type": "float", "low": 0.1, "high": 1.0, "log": True}}}


def merged(base: dict, patch: dict) -> dict:
    """base with patch laid over it, section by section (a None value removes the key)."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def sample():
    """200 images of the bundled sample, 20 per class (it is sorted by class: every 25th row)."""
    return pq.read_table(SAMPLE).take(list(range(0, 5000, 25)))


def write_parquet(path, table: pa.Table, **columns) -> str:
    """table with some columns replaced (a list or pa.Array) or removed (None); the class names kept."""
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        if values is None:
            table = table.remove_column(index)
        else:
            array = values if isinstance(values, pa.Array) else pa.array(values, table.schema.field(name).type)
            table = table.set_column(index, name, array) if index >= 0 else table.append_column(name, array)
    pq.write_table(table, path)
    return str(path)


@pytest.fixture
def project(tmp_path, monkeypatch, sample):
    """A working directory with data.parquet (200 images) and a writer of c.yaml from CONFIG + a patch."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    write_parquet(tmp_path / "data.parquet", sample)

    def config(patch: dict | None = None, text: str | None = None) -> str:
        (tmp_path / "c.yaml").write_text(text if text is not None else yaml.safe_dump(merged(CONFIG, patch or {})))
        return "c.yaml"
    config.dir = tmp_path
    return config


def fails(capsys, *argv: str) -> str:
    """main(argv) in this process: exit status 2, no traceback; its stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, f"exit status {code}\nstdout: {captured.out[-2000:]}\nstderr: {captured.err[-4000:]}"
    assert "Traceback" not in captured.err, captured.err
    assert captured.err.startswith(f"sslab {argv[0]}: error: "), captured.err
    return captured.err


def assert_says(message: str, *fragments: str) -> None:
    missing = [f for f in fragments if f not in message]
    assert not missing, f"missing {missing} in:\n{message}"


def assert_no_work(folder) -> None:
    """Nothing started: no Ray in this process, no MLflow store (so no run in it, RUNNING or not), no Ray
    Train storage, no study."""
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized(), "Ray was started"
    made = [name for name in ("mlflow.db", "mlruns", "sslab_runs", "optuna.db") if (folder / name).exists()]
    assert not made, f"work started before the error: {made}"


def sslab_process(*argv: str, cwd, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m sslab ...` as a real process: exit status 2 and no traceback asserted; the result."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, environment.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-m", "sslab", *argv], cwd=cwd, env={**environment, **(env or {})},
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 2, f"exit status {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A real (untrained) encoder.pt, as sslab train writes it."""
    from workloads.checkpoint import save_encoder
    from workloads.models.backbones import build_backbone

    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    save_encoder(str(path), build_backbone("small_convnet", width=8), "small_convnet", {"width": 8}, {"image_size": 32})
    return str(path)
