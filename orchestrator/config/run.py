"""The config of one run, section by section: every key checked (type, range, unknown keys) and the
cross-section rules, before anything runs."""
from typing import Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.config.sections import CropScale, Section
from orchestrator.config.video_workload import VIDEO_KINDS, check_clip_frames
from orchestrator.config.workload import ContrastiveWorkload, WorkloadConfig
from workloads.methods.negatives import NEGATIVES


class DataConfig(Section):
    uri: str = Field(description="a .parquet file, s3://bucket/key.parquet, an image folder, or cifar10://ROOT; "
                     "video workloads: a folder of videos or of frame folders (or on s3://), or synthetic:moving_objects?...")
    format: Literal["auto", "parquet", "folder", "cifar10"] = "auto"
    image_column: str = "image"
    label_column: str = "label"
    image_size: int = Field(32, ge=8, le=1024)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="the validation split (selects: pruning, the objective)")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="the held-out test split of data.uri, scored at the "
                                 "end and never selected on (default 0.1; 0 without data.test_uri: no test split)")
    test_uri: str | None = Field(None, description="an official test set (same format and columns as data.uri); "
                                 "replaces data.test_fraction, which then defaults to 0")
    s3_endpoint_url: str | None = None
    clip_frames: int = Field(16, ge=2, le=1024, description="video: frames per clip (a long video gives several clips)")
    fps: float | None = Field(None, gt=0.0, le=240.0, description="video: frames per second decoded (null: the file's own)")
    max_clips_per_video: int | None = Field(None, ge=1, description="video: at most this many clips of one video")
    cache_dir: str | None = Field(None, description="video: decoded clips kept here (keyed by content hash), so "
                                  "later runs and trials on this machine never decode them again; s3:// data mirrored")

    @model_validator(mode="before")
    @classmethod
    def _test_fraction_default(cls, data):
        if isinstance(data, dict) and data.get("test_fraction") is None:
            data = {**data, "test_fraction": 0.0 if data.get("test_uri") else 0.1}
        return data

    @model_validator(mode="after")
    def _splits_fit(self) -> "DataConfig":
        if self.test_uri is not None and self.test_fraction > 0:
            raise ValueError(f"data.test_fraction ({self.test_fraction}) and data.test_uri ({self.test_uri!r}) both "
                             "name a test set: give one (test_uri replaces the fraction; set test_fraction: 0 or remove it)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction ({self.val_fraction}) + data.test_fraction ({self.test_fraction}) must be "
                             "below 1: the rest of data.uri is the training split")
        return self


class AugmentConfig(Section):
    crop_scale: CropScale = (0.2, 1.0)
    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.0, ge=0.0, le=1.0)
    fused: bool = Field(False, description="crop+flip+resize in one resampling and the colour jitter, grayscale and "
                        "normalisation as one per-sample affine map: ~8x faster on the CPU; hue becomes a rotation about "
                        "the gray axis (workloads/augment_fused.py)")


class BankConfig(Section):
    """The shared, sharded memory bank of negatives (mode none: in-batch negatives only)."""

    mode: Literal["none", "queue", "instance"] = "none"
    size: int = Field(4096, ge=1, description="queue: K keys; instance: one entry per training image (>= their number)")
    shards: int = Field(1, ge=1, le=1024)
    negatives: Literal["exact", "sampled", "hardest"] = "exact"
    k: int = Field(16, ge=1, description="hardest: negatives mined per query")
    n: int = Field(4096, ge=1, description="sampled: negatives drawn per step")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    momentum: float = Field(0.5, ge=0.0, lt=1.0, description="instance mode: v <- normalize(m v + (1 - m) f)")
    key_momentum: float = Field(0.99, ge=0.0, lt=1.0, description="the MoCo key encoder's EMA momentum")
    cpus_per_shard: float = Field(0.0, ge=0.0, description="CPUs reserved per shard actor (0: placed by memory only)")
    snapshot_every: int = Field(20, ge=1, description="steps between shard snapshots (refill after a shard restart)")
    shuffle_bn: Literal["none", "shuffle", "split"] = Field(
        "none", description="the key encoder's BatchNorm: none (as the query's), shuffle (MoCo shuffle-BN across "
                            "workers), split (bn_splits sub-batches per worker, key views shuffled: MoCo's CIFAR demo)")
    bn_splits: int = Field(8, ge=2, description="shuffle_bn split: sub-batches per worker's batch")


class ModelConfig(Section):
    backbone: Literal["small_convnet", "resnet18_cifar"] = "small_convnet"
    width: int = Field(32, ge=4, le=1024, description="channels of the first stage (small_convnet)")
    projection_hidden_dim: int = Field(256, ge=1)
    projection_dim: int = Field(64, ge=1)
    sync_batchnorm: bool = Field(True, description="BatchNorm statistics over the global batch of all the trial's "
                                                   "workers (false: each worker's own rows); no effect on one worker")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(256, ge=2, le=1_000_000)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_epochs: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere; "
                                                      "bf16 also on CPUs with AVX512-BF16/AMX (faster there, see docs/benchmarks.md)")
    channels_last: Literal["auto", True, False] = Field("auto", description="NHWC activations for the convolutions "
                                                  "(auto: on CUDA only); true on the CPU too")
    compile: bool = Field(False, description="torch.compile the contrastive step (forward and loss; autograd compiles "
                          "the backward): the first step compiles (minutes on a small CPU); a compile error runs eagerly")
    progress: bool = True
    global_negatives: bool = Field(True, description="in-batch losses see every worker's rows (the global batch); "
                                                     "false: each worker's own rows only")
    log_step_loss_every: int = Field(0, ge=0, description="log train/step_loss every N global steps (0: off)")
    max_failures: int = Field(0, ge=-1, description="Ray Train restarts from the last epoch's checkpoint this many times (-1: forever)")
    max_minutes: float | None = Field(None, gt=0.0, description="a wall-clock budget for training: it stops after the "
                                      "step that spends it (in-batch contrastive; bank and pretext loops: the epoch), "
                                      "then evaluates as usual; train.epochs still sets the LR schedule (null: no budget)")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs})")
        return self


class ResourcesConfig(Section):
    workers: int = Field(1, ge=1, le=4096)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    in_process: Literal["auto", True, False] = Field("auto", description="run the one worker in a pooled Ray task "
                                                     "(Ray Train's local mode): no controller, placement group or worker "
                                                     "actor per run, and the next run reuses the process and its imports; "
                                                     "auto: when workers is 1 and train.max_failures 0 (nothing restarts it); "
                                                     "false: Ray Train's worker actors")


class EvalConfig(Section):
    knn_k: int = Field(200, ge=1)
    knn_temperature: float = Field(0.1, gt=0.0)
    linear_probe: bool = True
    embedding_map_points: int = Field(2000, ge=10)
    random_init_baseline: bool = Field(False, description="also score the encoder before training (downstream/random_init/knn_top1)")
    precision: Literal["train", "fp32"] = Field("train", description="the precision and layout the backbone runs in "
                                                "for the final scores and the pruner's: train (as training ran it: "
                                                "train.precision and train.channels_last, so bf16 + NHWC on CUDA, fp32 "
                                                "on the CPU unless train.precision: bf16) or fp32 (exact fp32 NCHW scores); "
                                                "video workloads score in fp32")
    images_uri: str | None = Field(None, description="video workloads: labelled images for the image kNN "
                                   "(downstream/knn_top1), so video and image encoders compare (null: the bundled sample)")
    # label propagation's knobs (the CRW protocol's), chosen on the synthetic clips' validation split: on
    # 8x8 feature grids (32 px at stride 4) few sharp neighbours over all past frames beat CRW's 10 / 0.07 / 20
    propagation_topk: int = Field(3, ge=1, le=1000, description="video: label propagation's top-k source pixels")
    propagation_temperature: float = Field(0.05, gt=0.0, le=10.0, description="video: label propagation's softmax temperature")
    propagation_context: int = Field(15, ge=0, le=64, description="video: recent predicted frames used as sources")
    max_clips: int = Field(32, ge=1, description="video: clips per split scored by label propagation")


# MLflow's tracking stores (its database dialects with or without a driver, e.g. postgresql+psycopg)
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")  # pyarrow's filesystems, as Ray Train reads them


def _scheme(value: str, valid: tuple[str, ...], examples: str) -> str:
    scheme = value.partition("://")[0].partition("+")[0].lower() if "://" in value else None
    if scheme is not None and scheme not in valid:
        raise ValueError(f"unsupported scheme {scheme!r}; valid: {examples}")
    return value


class TrackingConfig(Section):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI: sqlite:///file.db, http(s)://server, ...")
    experiment: str | None = Field(None, description="defaults to the config's name")
    artifact_location: str | None = Field(None, description="for a new experiment: a local folder or s3://bucket/prefix")

    @field_validator("uri")
    @classmethod
    def _known_store(cls, value: str) -> str:
        return _scheme(value, TRACKING_SCHEMES, "sqlite:///FILE.db, http(s)://SERVER:PORT, postgresql://USER@HOST/DB, "
                       "mysql://..., file:///FOLDER, or a local folder")


class StorageConfig(Section):
    path: str = Field("sslab_runs", description="Ray Train storage: local folder, shared folder or s3://bucket/prefix")

    @field_validator("path")
    @classmethod
    def _known_filesystem(cls, value: str) -> str:
        return _scheme(value, STORAGE_SCHEMES, "a local or shared folder, s3://BUCKET/PREFIX (or gs://, hdfs://, abfs://)")


class RunConfig(Section):
    """The config of one run: everything but the search block (schema.SSLabConfig adds it)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = Field(0, ge=0)
    data: DataConfig
    workload: WorkloadConfig = ContrastiveWorkload()
    bank: BankConfig = BankConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _batch_splits_over_workers(self) -> "RunConfig":
        if self.train.batch_size % self.resources.workers:
            raise ValueError(f"train.batch_size ({self.train.batch_size}) must be a multiple of resources.workers "
                             f"({self.resources.workers}): each worker takes an equal share of the batch")
        return self

    @model_validator(mode="after")
    def _in_process_fits(self) -> "RunConfig":
        if self.resources.in_process is True and (self.resources.workers != 1 or self.train.max_failures != 0):
            raise ValueError(f"resources.in_process: true runs one worker that is never restarted, but resources.workers "
                             f"is {self.resources.workers} and train.max_failures {self.train.max_failures}: set "
                             "resources.workers: 1 and train.max_failures: 0, or resources.in_process: auto or false")
        return self

    def runs_in_process(self) -> bool:
        """Whether the run's one worker runs in a pooled Ray task (resources.in_process) rather than Ray Train's actors."""
        if self.resources.in_process == "auto":
            return self.resources.workers == 1 and self.train.max_failures == 0
        return self.resources.in_process

    @model_validator(mode="after")
    def _key_batchnorm_fits(self) -> "RunConfig":
        bank, workers = self.bank, self.resources.workers
        if bank.shuffle_bn == "none":
            return self
        if bank.mode == "none":
            raise ValueError(f"bank.shuffle_bn {bank.shuffle_bn!r} is for the MoCo key encoder of a bank; bank.mode "
                             "is 'none': set bank.mode (queue or instance) or bank.shuffle_bn: none")
        if bank.shuffle_bn == "shuffle" and workers == 1:
            raise ValueError("bank.shuffle_bn 'shuffle' permutes keys across workers and resources.workers is 1: "
                             "on one worker use bank.shuffle_bn: split (per-sub-batch BN, as MoCo's CIFAR demo)")
        if workers > 1 and self.model.sync_batchnorm:
            raise ValueError(f"bank.shuffle_bn {bank.shuffle_bn!r} normalises keys per worker, but "
                             "model.sync_batchnorm is true (BN over the global batch needs no shuffle): set "
                             "model.sync_batchnorm: false, or bank.shuffle_bn: none")
        per_worker = self.train.batch_size // workers
        if bank.shuffle_bn == "split" and per_worker % bank.bn_splits:
            raise ValueError(f"bank.bn_splits ({bank.bn_splits}) must divide each worker's batch ({per_worker} = "
                             f"train.batch_size / resources.workers) into equal sub-batches")
        return self

    @model_validator(mode="after")
    def _budget_fits_the_loop(self) -> "RunConfig":
        if self.train.max_minutes is not None and self.workload.kind in VIDEO_KINDS:
            raise ValueError(f"train.max_minutes is not supported by video workloads ({self.workload.kind!r}); "
                             "remove it and bound the run with train.epochs")
        return self

    @model_validator(mode="after")
    def _clips_fit_the_task(self) -> "RunConfig":
        if self.workload.kind in VIDEO_KINDS:
            check_clip_frames(self.workload, self.data.clip_frames)
        return self

    @model_validator(mode="after")
    def _compile_fits_the_step(self) -> "RunConfig":
        if self.train.compile and (self.workload.kind != "contrastive" or self.bank.mode != "none"):
            raise ValueError(f"train.compile compiles the in-batch contrastive step; this run has workload.kind "
                             f"{self.workload.kind!r} and bank.mode {self.bank.mode!r}: set train.compile: false, or "
                             "workload.kind: contrastive with bank.mode: none")
        return self

    @model_validator(mode="after")
    def _bank_fits_loss(self) -> "RunConfig":
        if self.bank.mode == "none":
            return self
        if self.workload.kind != "contrastive":
            raise ValueError(f"bank.mode {self.bank.mode!r} serves contrastive workloads; workload.kind is "
                             f"{self.workload.kind!r}: set bank.mode: none")
        if self.workload.loss not in NEGATIVES[self.bank.negatives]:
            raise ValueError(f"workload.loss {self.workload.loss!r} cannot use bank.negatives {self.bank.negatives!r}; "
                             f"valid losses: {', '.join(NEGATIVES[self.bank.negatives])}")
        if self.bank.mode == "queue" and self.bank.size % self.bank.shards:
            raise ValueError(f"bank.size ({self.bank.size}) must be a multiple of bank.shards ({self.bank.shards}) in queue mode")
        return self

