"""The end of a run on rank 0: downstream scores, the encoder checkpoint and the figures.

Scores: downstream/* and repr/* on the validation split (what selects), test/knn_top1 and
test/linear_top1 on the held-out test split (what nothing selects on); the kNN memory and the linear
probe's training set are the training split.
"""
import os
import tempfile

import torch
import yaml
from torch import nn

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.secrets import redact
from orchestrator.tracking.figures import embedding_map
from orchestrator.training.state import report_checkpoint
from orchestrator.training.trial_eval import Splits, eval_precision, make_augment
from workloads.checkpoint import save_encoder
from workloads.downstream import downstream_scores


def report_final(config: SSLabConfig, encoder: nn.Module, kwargs: dict, splits: Splits, device: torch.device,
                 extra: dict | None = None, figures: dict | None = None, encoder_wrapper: str | None = None) -> None:
    """figures: {file name: matplotlib Figure} saved as artifacts beside the embedding map;
    encoder_wrapper: how the encoder wraps the backbone (see workloads.pretext.registry), kept in encoder.pt
    with the normalisation and the augmentation the encoder was trained with."""
    train, val, normalization = splits.train, splits.val, splits.normalization
    scoring = eval_precision(config, device)  # eval.precision: as training ran the backbone, or exact fp32
    scores, val_features = downstream_scores(encoder, train, val, normalization, make_augment(config, normalization),
                                             config.eval.knn_k, config.eval.knn_temperature, config.eval.linear_probe,
                                             device, config.seed, held_out=splits.test, **scoring._asdict())
    with tempfile.TemporaryDirectory() as folder:
        data = {"uri": config.data.uri, "content_hash": train.content_hash, "val_fraction": config.data.val_fraction,
                "test_fraction": config.data.test_fraction, "test_uri": config.data.test_uri}
        save_encoder(os.path.join(folder, "encoder.pt"), encoder, config.model.backbone, kwargs, {
            "image_size": config.data.image_size, "data": data, "normalization": normalization.as_dict(),
            "augment": config.augment.model_dump(mode="json"),
            "eval": config.eval.model_dump(), "classes": train.classes, "seed": config.seed,
            "encoder_wrapper": encoder_wrapper, "workload": config.workload.kind,
            "eval_precision": scoring._asdict(),  # how the scores were computed: sslab eval computes them so too
        })
        for name, figure in (figures or {}).items():
            figure.savefig(os.path.join(folder, name), dpi=100, bbox_inches="tight")
        shown = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[: config.eval.embedding_map_points]
        embedding_map(val_features[shown], val.labels[shown], train.classes, os.path.join(folder, "embedding_map.png"),
                      f"{config.name}: validation features (t-SNE), kNN top-1 {scores['downstream/knn_top1']:.3f}")
        with open(os.path.join(folder, "resolved_config.yaml"), "w") as handle:
            yaml.safe_dump(redact(config.model_dump(mode="json")), handle, sort_keys=False)  # secrets masked
        metrics = {"epoch": config.train.epochs, **scores, **(extra or {})}
        report_checkpoint(metrics, folder, "the final checkpoint")
