"""workloads.models: shapes, the CIFAR ResNet stem, the normalised head, the registry."""

import pytest
import torch
from torch import nn

from workloads.models import (
    ProjectionHead,
    SmallConvNet,
    build_backbone,
    resnet18_cifar,
)


def test_resnet18_cifar_stem_and_output():
    model = resnet18_cifar()
    assert model.feature_dim == 512
    conv1 = model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.in_channels == 3 and conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)
    assert isinstance(model.fc, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 512)


@pytest.mark.parametrize("width", [8, 32])
def test_small_convnet_shapes(width):
    model = SmallConvNet(width=width)
    assert model.feature_dim == 8 * width
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, model.feature_dim)
    assert out.dtype == torch.float32


def test_small_convnet_backward():
    model = SmallConvNet(width=8)
    model(torch.randn(4, 3, 32, 32)).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_build_backbone_names_and_kwargs():
    assert build_backbone("resnet18_cifar").feature_dim == 512
    small = build_backbone("small_convnet", width=4)
    assert isinstance(small, SmallConvNet) and small.feature_dim == 32


def test_build_backbone_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*resnet18_cifar, small_convnet"):
        build_backbone("resnet50")


def test_projection_head_output_is_unit_norm():
    head = ProjectionHead(32, 64, 16)
    z = head(torch.randn(8, 32) * 10)
    assert z.shape == (8, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(8))
    layers = [type(m) for m in head.net]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_backbone_into_head():
    backbone = SmallConvNet(width=4)
    head = ProjectionHead(backbone.feature_dim, 32, 8)
    z = head(backbone(torch.randn(3, 3, 32, 32)))
    assert z.shape == (3, 8)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        SmallConvNet(width=0)
    with pytest.raises(ValueError, match="hidden_dim must be an integer >= 1"):
        ProjectionHead(8, 0, 4)


def test_workloads_models_and_evaluate_import_torch_only():
    # Static check (no subprocess, so it stays fast): every import is the standard library,
    # torch/torchvision, or a relative import inside the package.
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "workloads"
    allowed = {"torch", "torchvision", "__future__", "math", "contextlib", "typing", "collections"}
    files = sorted((root / "models").glob("*.py")) + sorted((root / "evaluate").glob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
