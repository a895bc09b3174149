"""Downstream scores of a frozen encoder: the same procedure at the end of training and in `sslab eval`."""
import torch
from torch import nn
from torch.nn import functional as F

from .augment import SimCLRAugment
from .evaluate import alignment, knn_accuracy, linear_probe_accuracy, uniformity
from .evaluate.features import extract_features


def downstream_scores(
    backbone: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    linear_probe: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[dict[str, float], torch.Tensor]:
    """Metric name -> value (DESIGN.md names), plus the test features for figures.

    Alignment and uniformity use L2-normalised features of two augmented views of the test images,
    drawn with a fixed seed so the numbers repeat.
    """
    train_x = extract_features(backbone, train_images, device=device)
    test_x = extract_features(backbone, test_images, device=device)
    scores = {"downstream/knn_top1": knn_accuracy(train_x, train_labels, test_x, test_labels, k=knn_k, temperature=knn_temperature)}
    if linear_probe:
        scores["downstream/linear_top1"] = linear_probe_accuracy(train_x, train_labels, test_x, test_labels, seed=seed)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        view1, view2 = SimCLRAugment(image_size=test_images.shape[-1])(test_images.to(device))
    z1 = F.normalize(_features(backbone, view1), dim=1)
    z2 = F.normalize(_features(backbone, view2), dim=1)
    scores["repr/alignment"] = float(alignment(z1, z2))
    scores["repr/uniformity"] = float(uniformity(torch.cat([z1, z2])))
    return scores, test_x


@torch.no_grad()
def _features(backbone: nn.Module, views: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    backbone.eval()
    return torch.cat([backbone(views[i : i + batch_size]).float().cpu() for i in range(0, len(views), batch_size)])
