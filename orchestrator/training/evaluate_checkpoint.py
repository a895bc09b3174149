"""`sslab eval`: downstream scores of a saved encoder on the user's labelled data."""
import torch

from workloads.augment import SimCLRAugment
from workloads.checkpoint import checkpoint_normalization, load_encoder
from workloads.data import load_images
from workloads.downstream import downstream_scores
from workloads.evaluate.precision import FP32, FeaturePrecision

PRECISION_CHOICES = ("recorded", "fp32", "bf16")


def evaluate_checkpoint(path: str, train_uri: str, test_uri: str, knn_k: int | None = None,
                        knn_temperature: float | None = None, linear_probe: bool = True,
                        s3_endpoint_url: str | None = None, precision: str = "recorded") -> dict[str, float]:
    """The kNN memory and the probe's training set are train_uri's images, the scores test_uri's.
    Images are normalised as the encoder was trained (the normalisation stored in the checkpoint), and
    repr/* use the run's augmentation settings where the checkpoint keeps them.

    precision: recorded (the precision and layout the run's own scores were computed in, which
    encoder.pt keeps: so the run's numbers are reproduced; fp32 NCHW for checkpoints written before),
    fp32 (exact fp32 NCHW) or bf16 (bf16 autocast, in the recorded layout)."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder, metadata = load_encoder(path, device)
    recorded = FeaturePrecision.from_record(metadata.get("eval_precision"))
    scoring = {"recorded": recorded, "fp32": FP32, "bf16": recorded._replace(precision="bf16")}[precision]
    if scoring.channels_last:  # the run's encoder was NHWC (trained so): this freshly loaded copy is ours to convert
        encoder = encoder.to(memory_format=torch.channels_last)
    trained_eval = metadata.get("eval", {})
    size = metadata.get("image_size")
    normalization = checkpoint_normalization(metadata)
    train = load_images(train_uri, image_size=size, s3_endpoint_url=s3_endpoint_url)
    test = load_images(test_uri, image_size=size, s3_endpoint_url=s3_endpoint_url)
    augment = SimCLRAugment(test.images.shape[-1], **metadata.get("augment", {}), mean=normalization.mean,
                            std=normalization.std)
    scores, _ = downstream_scores(
        encoder, train, test, normalization, augment,
        knn_k=knn_k or trained_eval.get("knn_k", 200),
        knn_temperature=knn_temperature or trained_eval.get("knn_temperature", 0.1),
        linear_probe=linear_probe, device=device, seed=metadata.get("seed", 0), **scoring._asdict(),
    )
    return scores
