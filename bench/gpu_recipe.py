"""The GPU recipe (examples/cifar10_simclr_gpu.yaml) without Ray: kNN top-1 on the held-out split against minutes.

    .venv/bin/python bench/gpu_recipe.py --prepare      # here: CIFAR-10's JPEGs -> .gpu_data/ (45 MiB)
    python3 bench/gpu_recipe.py                         # on the GPU host (torch, torchvision, kornia; no pyarrow,
                                                        # Ray or MLflow needed): table, JSON and PNG in $OUT or .
    .venv/bin/python bench/gpu_recipe.py --device cpu --limit 512 --set train.batch_size=64 \
        --set train.compile=false --set train.max_minutes=0.1      # a dry run of every part on the CPU

It reads the example (and `--set KEY=VALUE` overrides, as `sslab train` takes them) and runs what the
Ray Train worker runs for it, from `workloads` alone: the stratified train / val / test split of the
data (`workloads.data.split_three_ways`, the run's seed), the normalisation of the training split,
ResNet-18 + projection head + NT-Xent, channels_last, `compile_or_eager`, SGD with nesterov momentum,
warm-up + cosine per step, and `train_epoch` over uint8 images held on the device with the fused
augmentation. After every `--eval-every` epochs (and the last) it scores kNN top-1 (k, temperature
from eval.*) of the held-out test split against the training split's features. The clock counts
training only (evaluation is timed apart) and stops after the epoch that passes train.max_minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from workloads.augment import SimCLRAugment  # noqa: E402
from workloads.data.normalization import Normalization  # noqa: E402
from workloads.data.split import split_three_ways  # noqa: E402
from workloads.evaluate.features import extract_features  # noqa: E402
from workloads.evaluate.knn import knn_accuracy  # noqa: E402
from workloads.methods.contrastive import ContrastiveLearner  # noqa: E402
from workloads.models import ProjectionHead, build_backbone  # noqa: E402
from workloads.training.compiled import compile_or_eager  # noqa: E402
from workloads.training.loop import epoch_shard, train_epoch, use_channels_last, warmup_cosine  # noqa: E402

EXAMPLE = os.path.join(ROOT, "examples", "cifar10_simclr_gpu.yaml")
GPU_DATA = os.path.join(ROOT, ".gpu_data")  # git-ignored: carry it to the GPU host


def prepared_path(uri: str) -> str:
    """Where --prepare writes data.uri's JPEGs: .gpu_data/<file name>.jpeg.pt."""
    return os.path.join(GPU_DATA, os.path.basename(uri) + ".jpeg.pt")


def read_config(path: str, overrides: list[str]) -> dict:
    import yaml

    with open(path) as handle:
        config = yaml.safe_load(handle)
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    return config


def prepare(uri: str, out: str) -> None:
    """The parquet's JPEG bytes and labels as one torch file (the GPU host has no pyarrow)."""
    import pyarrow.parquet as pq

    table = pq.read_table(uri, columns=["image", "label"])
    jpegs = table.column("image").to_pylist()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save({"bytes": torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8),  # one tensor: small file
                "lengths": torch.tensor([len(b) for b in jpegs]),
                "labels": torch.tensor(table.column("label").to_pylist())}, out)
    print(f"wrote {out}: {len(jpegs)} images, {os.path.getsize(out) / 2**20:.1f} MiB")


def load_data(uri: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N,3,32,32] and labels: data.uri's prepared file where there is one, else data.uri itself."""
    if os.path.exists(prepared_path(uri)):
        from torchvision.io import decode_jpeg

        saved = torch.load(prepared_path(uri), weights_only=True)  # tensors only
        jpegs = list(saved["bytes"].split(saved["lengths"].tolist()))
        decoded = decode_jpeg(jpegs, device=device if device.type == "cuda" else "cpu")
        return torch.stack(decoded).cpu(), saved["labels"]
    from workloads.data import load_images

    data = load_images(os.path.join(ROOT, uri) if not os.path.isabs(uri) else uri)
    return data.images, data.labels


def knn_top1(backbone, train_x, train_y, test_x, test_y, normalization, config, device) -> float:
    memory, query = (extract_features(backbone, x, normalization, batch_size=1024, device=device)
                     for x in (train_x, test_x))
    return knn_accuracy(memory, train_y, query, test_y, k=config["eval"]["knn_k"],
                        temperature=config["eval"]["knn_temperature"])


def run(config: dict, device: torch.device, limit: int | None, eval_every: int, log=print) -> list[dict]:
    data, train_cfg, model_cfg = config["data"], config["train"], config["model"]
    images, labels = load_data(data["uri"], device)
    if limit:  # a random subset (the file is sorted by class)
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config["seed"]))[:limit]
        images, labels = images[keep], labels[keep]
    train_ids, _, test_ids = split_three_ways(labels, data["val_fraction"], data["test_fraction"], config["seed"])
    normalization = Normalization.of_images(images[train_ids])
    torch.manual_seed(config["seed"])
    backbone = build_backbone(model_cfg["backbone"])
    head = ProjectionHead(backbone.feature_dim, model_cfg["projection_hidden_dim"], model_cfg["projection_dim"])
    workload = config["workload"]
    learner = ContrastiveLearner(backbone, head, workload["loss"], workload["temperature"], 1.0).to(device)
    channels_last = use_channels_last(train_cfg.get("channels_last", "auto"), device)
    if channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if train_cfg.get("compile"):
        learner = compile_or_eager(learner)
    optimizer = torch.optim.SGD(learner.parameters(), lr=train_cfg["lr"], momentum=train_cfg["momentum"],
                                weight_decay=train_cfg["weight_decay"], nesterov=True)
    batch, epochs = train_cfg["batch_size"], train_cfg["epochs"]
    steps = len(train_ids) // batch
    scheduler = warmup_cosine(optimizer, steps * epochs, steps * train_cfg["warmup_epochs"])
    augment = SimCLRAugment(32, **config.get("augment", {}), mean=normalization.mean, std=normalization.std).to(device)
    train_x = images[train_ids].to(device)  # uint8, decoded once: batches are indexed on the device
    budget_s = 60 * train_cfg.get("max_minutes", 15)
    rows, trained_s = [], 0.0
    for epoch in range(epochs):
        ids = epoch_shard(len(train_ids), epoch, config["seed"], 0, 1, batch).to(device)
        stats = train_epoch(learner, optimizer, scheduler, train_x, ids, augment, batch, device,
                            train_cfg["precision"], channels_last=channels_last)
        trained_s += stats.seconds
        last = epoch == epochs - 1 or trained_s >= budget_s
        if (epoch + 1) % eval_every and not last:
            continue
        start = time.perf_counter()
        top1 = knn_top1(backbone, images[train_ids], labels[train_ids], images[test_ids], labels[test_ids],
                        normalization, config, device)
        rows.append({"epoch": epoch + 1, "minutes": trained_s / 60, "knn_top1": top1, "loss": stats.loss,
                     "images_per_s": stats.images_per_s, "eval_s": time.perf_counter() - start})
        log(f"epoch {epoch + 1:4d}  {trained_s / 60:6.2f} min  kNN top-1 {top1:.4f}  loss {stats.loss:.4f}  "
            f"{stats.images_per_s:8.0f} img/s", flush=True)
        if last:
            break
    return rows


def write(rows: list[dict], meta: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_recipe.json"), "w") as handle:
        json.dump({**meta, "rows": rows}, handle, indent=1)
    print("| epoch | minutes | kNN top-1 (held-out) | images/s |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['epoch']} | {row['minutes']:.2f} | {row['knn_top1']:.4f} | {row['images_per_s']:.0f} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib here: the PNG is left to `bench/gpu_recipe.py --plot gpu_recipe.json`)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["minutes"] for r in rows], [r["knn_top1"] for r in rows], marker="o")
    ax.axhline(0.85, color="gray", linestyle="--", label="goal 0.85")
    ax.axvline(15, color="gray", linestyle=":", label="15 min")
    ax.set(xlabel="training wall-clock (minutes)", ylabel="kNN top-1, held-out split",
           title=f"SimCLR ResNet-18 CIFAR-10, {meta['device_name']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gpu_recipe.png"), dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=EXAMPLE)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=None, help="the first N images only (dry runs)")
    ap.add_argument("--eval-every", type=int, default=10, help="epochs between kNN scores")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_recipe.json/.png")
    ap.add_argument("--prepare", action="store_true", help="write data.uri's JPEGs to .gpu_data/ and exit")
    ap.add_argument("--plot", help="a gpu_recipe.json to draw (and print as a table) again")
    args = ap.parse_args()
    config = read_config(args.config, args.overrides)
    if args.prepare:
        prepare(os.path.join(ROOT, config["data"]["uri"]), prepared_path(config["data"]["uri"]))
        return 0
    if args.plot:
        with open(args.plot) as handle:
            saved = json.load(handle)
        write(saved.pop("rows"), saved, args.out)
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}; {name}; config {os.path.relpath(args.config, ROOT)} {' '.join(args.overrides)}")
    start = time.perf_counter()
    rows = run(config, device, args.limit, args.eval_every)
    meta = {"device_name": name, "torch": torch.__version__, "overrides": args.overrides, "limit": args.limit,
            "train": config["train"], "script_s": time.perf_counter() - start}
    write(rows, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
