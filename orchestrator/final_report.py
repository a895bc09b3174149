"""The end of a run on rank 0: downstream scores, the encoder checkpoint and the figures."""
import os
import tempfile

import ray.train
import torch
import yaml
from torch import nn

from workloads.checkpoint import save_encoder
from workloads.data import ImageDataset
from workloads.downstream import downstream_scores

from .config import SSLabConfig
from .figures import embedding_map


def report_final(config: SSLabConfig, encoder: nn.Module, kwargs: dict, train: ImageDataset, val: ImageDataset,
                 device: torch.device, extra: dict | None = None, figures: dict | None = None,
                 encoder_wrapper: str | None = None) -> None:
    """figures: {file name: matplotlib Figure} saved as artifacts beside the embedding map;
    encoder_wrapper: how the encoder wraps the backbone (see workloads.pretext.registry), kept in encoder.pt."""
    scores, val_features = downstream_scores(encoder, train.images, train.labels, val.images, val.labels,
                                             config.eval.knn_k, config.eval.knn_temperature, config.eval.linear_probe,
                                             device, config.seed)
    with tempfile.TemporaryDirectory() as folder:
        save_encoder(os.path.join(folder, "encoder.pt"), encoder, config.model.backbone, kwargs, {
            "image_size": config.data.image_size, "data": {"uri": config.data.uri, "content_hash": train.content_hash},
            "eval": config.eval.model_dump(), "classes": train.classes, "seed": config.seed,
            "encoder_wrapper": encoder_wrapper, "workload": config.workload.kind,
        })
        for name, figure in (figures or {}).items():
            figure.savefig(os.path.join(folder, name), dpi=100, bbox_inches="tight")
        shown = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[: config.eval.embedding_map_points]
        embedding_map(val_features[shown], val.labels[shown], train.classes, os.path.join(folder, "embedding_map.png"),
                      f"{config.name}: validation features (t-SNE), kNN top-1 {scores['downstream/knn_top1']:.3f}")
        with open(os.path.join(folder, "resolved_config.yaml"), "w") as handle:
            yaml.safe_dump(config.model_dump(mode="json"), handle, sort_keys=False)
        metrics = {"epoch": config.train.epochs, **scores, **(extra or {})}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
