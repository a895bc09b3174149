"""bench/peers.py compares like with like: lightly's side gets sslab's model, loss and budget settings."""
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("lightly", reason="the bench extra (pip install -e .[bench]) is not installed")

from orchestrator.training.learners import build_learner  # noqa: E402
from workloads.losses import nt_xent_loss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("peers", os.path.join(ROOT, "bench", "peers.py"))
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("peers"))
    args = peers.parse_args(["--minutes", "1.5", "--batch-size", "64", "--temperature", "0.3", "--hidden", "96",
                             "--out-dim", "24"])
    config = peers.run_config(args, os.path.join(ROOT, "examples", "data", "cifar10_sample.parquet"), workdir)
    sslab, _ = build_learner(config, None, num_images=1000)
    return config, sslab, peers.lightly_parts(config)


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [tuple(m.weight.shape) for m in module.modules() if isinstance(m, nn.Linear)]


def test_both_sides_get_the_same_backbone_projection_sizes_and_budget(sides):
    config, sslab, (backbone, head, _, _, _) = sides
    assert config.train.max_minutes == 1.5 and config.train.batch_size == 64
    assert type(backbone) is type(sslab.backbone)
    assert {k: v.shape for k, v in backbone.state_dict().items()} == {
        k: v.shape for k, v in sslab.backbone.state_dict().items()}
    assert linear_shapes(head) == linear_shapes(sslab.head) == [(96, backbone.feature_dim), (24, 96)]


def test_lightly_ntxent_is_sslab_ntxent_at_the_same_temperature(sides):
    _, sslab, (_, _, loss, _, _) = sides
    assert loss.temperature == sslab.temperature == 0.3
    z0, z1 = torch.randn(16, 24, dtype=torch.float64), torch.randn(16, 24, dtype=torch.float64)
    # lightly normalises inside its loss, sslab in its projection head: the same loss on the same embeddings
    expected = nt_xent_loss(F.normalize(z0, dim=1), F.normalize(z1, dim=1), sslab.temperature)
    assert torch.allclose(loss(z0, z1), expected)


@pytest.mark.skipif(not os.path.exists(peers.CIFAR10), reason="no /work/shared/data CIFAR-10")
def test_subset_is_stratified_and_seeded(tmp_path):
    import pyarrow.parquet as pq

    first, again, other = (str(tmp_path / name) for name in ("a.parquet", "b.parquet", "c.parquet"))
    for path, seed in ((first, 0), (again, 0), (other, 1)):
        peers.write_subset(200, seed, path)
    table = pq.read_table(first)
    assert np.bincount(table.column("label").to_numpy()).tolist() == [20] * 10
    assert table.column("path").to_pylist() == pq.read_table(again).column("path").to_pylist()
    assert table.column("path").to_pylist() != pq.read_table(other).column("path").to_pylist()
    assert b"classes" in table.schema.metadata
