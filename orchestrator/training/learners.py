"""The model a run trains, by workload: a pretext task, or a contrastive learner (in-batch or bank negatives)."""
from torch import nn

from orchestrator.config.schema import SSLabConfig
from workloads.data import ImageDataset
from workloads.distributed import unwrap
from workloads.methods.bank_objective import BankObjective
from workloads.methods.contrastive import ContrastiveLearner
from workloads.methods.momentum_contrast import MomentumKeyEncoder, QueryEncoder
from workloads.models import ProjectionHead, build_backbone
from workloads.models.batchnorm import convert_batchnorm
from workloads.pretext.base import PretextTask, normalize
from workloads.pretext.registry import build_task


def backbone_kwargs(config: SSLabConfig) -> dict:
    """Each split-brain half is half as wide, so the pair costs about one backbone (as in the paper)."""
    if config.model.backbone != "small_convnet":
        return {}
    halves = config.workload.kind == "split_brain"
    return {"width": max(1, config.model.width // 2) if halves else config.model.width}


def build_learner(config: SSLabConfig, bank, num_images: int):
    """(learner, bank objective): a pretext task; a contrastive learner with in-batch negatives
    (gathered from every worker unless train.global_negatives is false); or a query encoder whose
    negatives come from the trial's shared bank (its key encoder: key_encoder_for, after DDP)."""
    kwargs = backbone_kwargs(config)
    if config.workload.kind != "contrastive":
        params = config.workload.model_dump(exclude={"kind"})
        return build_task(config.workload.kind, params, config.model.backbone, kwargs, num_images), None
    backbone = build_backbone(config.model.backbone, **kwargs)
    head = ProjectionHead(backbone.feature_dim, config.model.projection_hidden_dim, config.model.projection_dim)
    workload = config.workload
    if bank is None:  # in-batch negatives
        return ContrastiveLearner(backbone, head, workload.loss, workload.temperature, workload.margin,
                                  gather=config.train.global_negatives), None
    if bank.mode == "instance" and bank.size < num_images:
        raise ValueError(f"bank.size ({bank.size}) must be at least the number of training images ({num_images}) "
                         "in instance mode: one entry per image")
    learner = QueryEncoder(backbone, head)  # keys from a momentum encoder
    objective = BankObjective(bank, config.bank.negatives, workload.loss, workload.temperature, workload.margin,
                              config.bank.k, config.bank.n)
    return learner, objective


def batchnorm_for_workers(learner: nn.Module, config: SSLabConfig, world: int, device) -> nn.Module:
    """Before DDP: BN over sub-batches (bank.shuffle_bn: split), or over the global batch
    (model.sync_batchnorm with several workers: torch's SyncBatchNorm on CUDA, GlobalBatchNorm on gloo)."""
    if config.bank.shuffle_bn == "split":
        return convert_batchnorm(learner, "split", config.bank.bn_splits)
    if world > 1 and config.model.sync_batchnorm:
        if device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(learner)
        return convert_batchnorm(learner, "global")
    return learner


def key_encoder_for(learner: nn.Module, config: SSLabConfig) -> MomentumKeyEncoder:
    """The MoCo key encoder, copied from the DDP-synchronised query encoder and then made rank 0's
    on every rank (so the bank receives keys from one network)."""
    key_encoder = MomentumKeyEncoder(unwrap(learner), config.bank.key_momentum, config.bank.shuffle_bn, config.seed)
    key_encoder.synchronise()
    return key_encoder



def encoder_of(learner):
    """The encoder downstream evaluation keeps: a pretext task's `encoder`, a contrastive learner's `backbone`."""
    plain = unwrap(learner)
    return plain.encoder if isinstance(plain, PretextTask) else plain.backbone


def task_figure(task, val: ImageDataset, device):
    """The pretext task's own figure on a few validation images (what it asks and what it answers)."""
    images = normalize(val.images[:8].to(device).float() / 255.0, task.normalization)
    return task.figure(images)

