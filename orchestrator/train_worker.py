"""The per-worker function of a Ray Train run: the contrastive workload, reporting through ray.train."""
import os
import tempfile

import ray.train
import ray.train.torch
import torch
import yaml

from workloads.augment import SimCLRAugment
from workloads.checkpoint import save_encoder
from workloads.contrastive import ContrastiveLearner
from workloads.data import load_images, stratified_split
from workloads.downstream import downstream_scores
from workloads.evaluate import knn_accuracy
from workloads.evaluate.features import extract_features
from workloads.models import ProjectionHead, build_backbone
from workloads.train_loop import epoch_shard, train_epoch, warmup_cosine

from .config import SSLabConfig
from .figures import embedding_map


def build_optimizer(params, train) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def backbone_kwargs(config: SSLabConfig) -> dict:
    return {"width": config.model.width} if config.model.backbone == "small_convnet" else {}


def train_worker(loop_config: dict) -> None:
    config = SSLabConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    torch.manual_seed(config.seed * 1000 + rank)  # model init is synchronised by DDP; augmentations differ per rank
    device = ray.train.torch.get_device()

    data = load_images(config.data.uri, config.data.format, config.data.image_column, config.data.label_column,
                       config.data.image_size, config.data.s3_endpoint_url)
    train_idx, val_idx = stratified_split(data.labels, config.data.val_fraction, config.seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    per_worker_batch = config.train.batch_size // world

    backbone = build_backbone(config.model.backbone, **backbone_kwargs(config))
    head = ProjectionHead(backbone.feature_dim, config.model.projection_hidden_dim, config.model.projection_dim)
    learner = ContrastiveLearner(backbone, head, config.workload.loss, config.workload.temperature, config.workload.margin)
    learner = ray.train.torch.prepare_model(learner)
    augment = SimCLRAugment(config.data.image_size, **config.augment.model_dump()).to(device)
    optimizer = build_optimizer(learner.parameters(), config.train)
    steps_per_epoch = (len(train) // world) // per_worker_batch
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.train.epochs, steps_per_epoch * config.train.warmup_epochs)

    baseline = {}
    if rank == 0 and config.eval.random_init_baseline:
        features = [extract_features(backbone, images, device=device) for images in (train.images, val.images)]
        baseline["downstream/random_init/knn_top1"] = knn_accuracy(features[0], train.labels, features[1], val.labels,
                                                                   k=config.eval.knn_k, temperature=config.eval.knn_temperature)
    progress = _progress_bar(config, rank, steps_per_epoch)
    for epoch in range(config.train.epochs):
        indices = epoch_shard(len(train), epoch, config.seed, rank, world)
        stats = train_epoch(learner, optimizer, scheduler, train.images, indices, augment, per_worker_batch, device,
                            config.train.precision, on_step=(lambda step, loss: progress.update(1)) if progress else None)
        metrics = {"epoch": epoch, "train/loss": stats.loss, "train/lr": stats.lr, "train/images_per_s": stats.images_per_s}
        if epoch == 0:
            metrics.update({"sslab.data_hash": data.content_hash, **baseline})
        if progress:
            progress.set_description(f"epoch {epoch + 1}/{config.train.epochs} loss {stats.loss:.3f}")
        ray.train.report(metrics)
    if progress:
        progress.close()

    if rank != 0:
        ray.train.report({"epoch": config.train.epochs})
        return
    encoder = learner.module.backbone if hasattr(learner, "module") else learner.backbone
    scores, val_features = downstream_scores(encoder, train.images, train.labels, val.images, val.labels,
                                             config.eval.knn_k, config.eval.knn_temperature, config.eval.linear_probe,
                                             device, config.seed)
    with tempfile.TemporaryDirectory() as folder:
        save_encoder(os.path.join(folder, "encoder.pt"), encoder, config.model.backbone, backbone_kwargs(config), {
            "image_size": config.data.image_size, "data": {"uri": config.data.uri, "content_hash": data.content_hash},
            "eval": config.eval.model_dump(), "classes": data.classes, "seed": config.seed,
        })
        shown = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[: config.eval.embedding_map_points]
        embedding_map(val_features[shown], val.labels[shown], data.classes, os.path.join(folder, "embedding_map.png"),
                      f"{config.name}: validation features (t-SNE), kNN top-1 {scores['downstream/knn_top1']:.3f}")
        with open(os.path.join(folder, "resolved_config.yaml"), "w") as handle:
            yaml.safe_dump(config.model_dump(mode="json"), handle, sort_keys=False)
        ray.train.report({"epoch": config.train.epochs, **scores}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _progress_bar(config: SSLabConfig, rank: int, steps_per_epoch: int):
    if rank != 0 or not config.train.progress:
        return None
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(total=steps_per_epoch * config.train.epochs, desc=f"epoch 1/{config.train.epochs}")
