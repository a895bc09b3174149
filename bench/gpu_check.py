"""One prepared CUDA check of sslab's training step (needs only torch, torchvision, kornia, workloads).

    python3 bench/gpu_check.py                 # on the GPU host: 18 s on an H200
    .venv/bin/python bench/gpu_check.py --device cpu --quick   # dry run of every code path on a CPU

  (a) `train_epoch` with resnet18_cifar, batch 512, precision "fp32" against "bf16" (autocast):
      images/s of each and the bf16/fp32 speedup (median of per-round ratios, interleaved rounds).
      "fp32" leaves PyTorch's defaults alone, so cuDNN convolutions may use TF32 (the flags are printed).
  (b) sslab's step against the bare PyTorch loop of bench/train_step.py on CUDA in bf16, for
      resnet18_cifar batch 512 and small_convnet width 32 batch 256.
  (c) each of the six losses, forward + backward under bf16 autocast: on bf16 embeddings passed
      straight in, and through a ContrastiveLearner (small_convnet + ProjectionHead); the loss and
      every gradient must be finite. NT-Xent's loss and gradient under autocast must match fp32
      within a tolerance (the other losses' differences are printed, not checked).
  (d) torch / CUDA / cuDNN / torchvision / kornia versions and the GPU's name.

Everything is printed; with OUT set, the results also go to $OUT/gpu_check.json. A failing
section is reported and the others still run. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from train_step import DATA, HIDDEN, LR, MARGIN, OUT_DIM, TEMPERATURE, WEIGHT_DECAY, compare, load_uint8_images  # noqa: E402

from workloads.augment import SimCLRAugment  # noqa: E402
from workloads.methods.contrastive import LOSSES, ContrastiveLearner, two_view_loss  # noqa: E402
from workloads.models import ProjectionHead, build_backbone  # noqa: E402
from workloads.training.loop import train_epoch  # noqa: E402

NT_XENT_LOSS_RTOL = 1e-2  # |loss_bf16 - loss_fp32| / |loss_fp32|
NT_XENT_GRAD_RTOL = 5e-2  # ||g_bf16 - g_fp32|| / ||g_fp32||, gradient of the embedding layer's weight


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def versions(device: torch.device) -> dict:
    import kornia
    import torchvision

    info = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "kornia": kornia.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    return info


def precision_speedup(images, device, batch_size: int, rounds: int, steps: int, warmup: int, log) -> dict:
    """(a): train_epoch on resnet18_cifar, fp32 against bf16 autocast, interleaved rounds."""
    torch.manual_seed(0)
    net = build_backbone("resnet18_cifar")
    learner = ContrastiveLearner(net, ProjectionHead(net.feature_dim, HIDDEN, OUT_DIM), "nt_xent", TEMPERATURE, MARGIN)
    augment = SimCLRAugment(images.shape[-1]).to(device)
    runs = {}
    # bf16_cl: what the worker does on CUDA: channels_last model and views, images held on the device
    # (cudnn.benchmark is on for every variant here).
    torch.backends.cudnn.benchmark = device.type == "cuda"
    on_device = images.to(device)
    for variant in ("fp32", "bf16", "bf16_cl"):
        model = copy.deepcopy(learner).to(device)
        if variant == "bf16_cl":
            model = model.to(memory_format=torch.channels_last)
        runs[variant] = (model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY))
    gen = torch.Generator().manual_seed(1)

    def once(variant: str, n_steps: int) -> tuple[float, float]:
        model, optimizer = runs[variant]
        precision, cl = variant[:4], variant == "bf16_cl"
        idx = torch.randperm(len(images), generator=gen)[: n_steps * batch_size]
        source = on_device if cl else images
        sync(device)
        t0 = time.perf_counter()
        stats = train_epoch(model, optimizer, None, source, idx.to(source.device), augment, batch_size, device,
                            precision, channels_last=cl)
        sync(device)
        return len(idx) / (time.perf_counter() - t0), stats.loss

    t0 = time.perf_counter()
    for precision in runs:
        once(precision, warmup)
    log(f"  warm-up: {warmup} steps each, {time.perf_counter() - t0:.1f} s")
    rates, losses, ratios, cl_ratios = {v: [] for v in runs}, {v: [] for v in runs}, [], []
    for r in range(rounds):
        for variant in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            rate, loss = once(variant, steps)
            rates[variant].append(rate)
            losses[variant].append(loss)
        ratios.append(rates["bf16"][-1] / rates["fp32"][-1])
        cl_ratios.append(rates["bf16_cl"][-1] / rates["fp32"][-1])
        log(f"  round {r + 1}/{rounds}: fp32 {rates['fp32'][-1]:9.1f} img/s (loss {losses['fp32'][-1]:.4f})   "
            f"bf16 {rates['bf16'][-1]:9.1f} img/s   bf16_cl {rates['bf16_cl'][-1]:9.1f} img/s   "
            f"bf16/fp32 {ratios[-1]:.3f}  bf16_cl/fp32 {cl_ratios[-1]:.3f}")
    finite = all(math.isfinite(v) for vs in losses.values() for v in vs)
    out = {
        "backbone": "resnet18_cifar", "batch_size": batch_size, "rounds": rounds, "steps_per_round": steps,
        "fp32_images_per_s": statistics.median(rates["fp32"]), "bf16_images_per_s": statistics.median(rates["bf16"]),
        "bf16_over_fp32": statistics.median(ratios), "ratios": ratios,
        "bf16_cl_images_per_s": statistics.median(rates["bf16_cl"]), "bf16_cl_over_fp32": statistics.median(cl_ratios), "rates": rates, "losses": losses,
        "losses_finite": finite,
    }
    if device.type == "cuda":
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def _grads_finite(params) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def loss_checks(device: torch.device, batch: int, log) -> dict:
    """(c): the six losses under bf16 autocast, on bf16 embeddings and through a ContrastiveLearner."""
    results, ok = {}, True
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, batch, 128, generator=gen).to(device)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    augment = SimCLRAugment(32).to(device)
    with torch.no_grad():
        views = augment(images)
    for name in LOSSES:
        torch.manual_seed(0)
        layer = torch.nn.Linear(128, OUT_DIM).to(device)
        entry = {}
        # fp32 reference, then the same layer and inputs under bf16 autocast.
        for precision in ("fp32", "bf16"):
            layer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                h1, h2 = layer(x[0]), layer(x[1])
                z1, z2 = (F.normalize(h, dim=1).to(h.dtype) for h in (h1, h2))
                loss = two_view_loss(z1, z2, name, TEMPERATURE, MARGIN)
            loss.backward()
            entry[precision] = {
                "embedding_dtype": str(z1.dtype).replace("torch.", ""), "loss_dtype": str(loss.dtype).replace("torch.", ""),
                "loss": float(loss.detach()), "finite": bool(torch.isfinite(loss.detach())) and _grads_finite(layer.parameters()),
                "grad": layer.weight.grad.detach().float().clone(),
            }
        g32, g16 = entry["fp32"].pop("grad"), entry["bf16"].pop("grad")
        entry["loss_rel_diff"] = abs(entry["bf16"]["loss"] - entry["fp32"]["loss"]) / max(abs(entry["fp32"]["loss"]), 1e-12)
        entry["grad_rel_diff"] = float((g16 - g32).norm() / g32.norm().clamp_min(1e-12))
        entry["bf16_embeddings"] = entry["bf16"]["embedding_dtype"] == "bfloat16"
        # Through the learner: backbone + head under autocast, as train_epoch runs it.
        torch.manual_seed(0)
        net = build_backbone("small_convnet", width=16)
        learner = ContrastiveLearner(net, ProjectionHead(net.feature_dim, HIDDEN, OUT_DIM), name, TEMPERATURE,
                                     MARGIN).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = learner(*views)
        loss.backward()
        entry["learner"] = {"loss": float(loss.detach()), "finite": bool(torch.isfinite(loss.detach())) and _grads_finite(learner.parameters())}
        checks = [entry["fp32"]["finite"], entry["bf16"]["finite"], entry["learner"]["finite"], entry["bf16_embeddings"]]
        if name == "nt_xent":
            entry["tolerance"] = {"loss_rtol": NT_XENT_LOSS_RTOL, "grad_rtol": NT_XENT_GRAD_RTOL}
            checks += [entry["loss_rel_diff"] <= NT_XENT_LOSS_RTOL, entry["grad_rel_diff"] <= NT_XENT_GRAD_RTOL]
        entry["ok"] = all(checks)
        ok &= entry["ok"]
        results[name] = entry
        log(f"  {name:18s} {'ok  ' if entry['ok'] else 'FAIL'} fp32 loss {entry['fp32']['loss']:.5f}  "
            f"bf16 loss {entry['bf16']['loss']:.5f} (on {entry['bf16']['embedding_dtype']}, "
            f"loss in {entry['bf16']['loss_dtype']})  rel diff loss {entry['loss_rel_diff']:.2e} "
            f"grad {entry['grad_rel_diff']:.2e}  learner loss {entry['learner']['loss']:.5f}"
            f"{'' if entry['learner']['finite'] else ' NOT FINITE'}")
    return {"ok": ok, "batch": batch, "losses": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to try every code path on a CPU")
    ap.add_argument("--min-ratio", type=float, default=0.9, help="for (b), sslab/bare")
    args = ap.parse_args()
    device = torch.device(args.device)
    q = args.quick
    report: dict = {"ok": True, "failed": []}
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    def section(key: str, title: str, fn):
        log(f"\n== ({key}) {title}  [{time.perf_counter() - t_start:.0f} s]")
        try:
            report[key] = fn()
        except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
            traceback.print_exc()
            report[key] = {"error": f"{type(error).__name__}: {error}"}
            report["ok"] = False
            report["failed"].append(key)
            return None
        return report[key]

    info = section("d", "versions", lambda: versions(device))
    if info:
        for k, v in info.items():
            log(f"  {k}: {v}")
    images, source = load_uint8_images(DATA)
    report["images"] = f"{source} {list(images.shape)}"
    log(f"  images: {report['images']}")

    bs_big = 32 if q else 512
    a = section("a", f"train_epoch resnet18_cifar batch {bs_big}: fp32 vs bf16 autocast",
                lambda: precision_speedup(images, device, bs_big, rounds=2 if q else 5, steps=1 if q else 8,
                                          warmup=1 if q else 3, log=log))
    if a:
        log(f"  fp32 {a['fp32_images_per_s']:.1f} img/s, bf16 {a['bf16_images_per_s']:.1f} img/s, "
            f"bf16/fp32 speedup {a['bf16_over_fp32']:.3f}; bf16 + channels_last + images on device "
            f"{a['bf16_cl_images_per_s']:.1f} img/s, {a['bf16_cl_over_fp32']:.3f}x fp32 (medians of per-round ratios)")
        if not a["losses_finite"]:
            report["ok"] = False
            report["failed"].append("a: loss not finite")
    if device.type == "cuda":
        torch.cuda.empty_cache()

    configs = [("resnet18_cifar", bs_big, 2 if q else 7, 1 if q else 4),
               ("small_convnet", 32 if q else 256, 2 if q else 7, 1 if q else 8)]

    def step_vs_bare() -> dict:
        out = {}
        for backbone, bs, rounds, steps in configs:
            log(f"  -- {backbone} batch {bs}, bf16, {rounds} rounds of {steps} steps per side")
            r = compare(images, device, backbone, 32, bs, "bf16", rounds, steps, warmup=1 if q else 3,
                        log=lambda m: log("  " + m))
            log(f"  {backbone}: sslab {r['sslab_images_per_s']:.1f} img/s, bare {r['bare_images_per_s']:.1f} img/s, "
                f"ratio {r['ratio']:.3f}")
            r["ok"] = r["ratio"] >= args.min_ratio
            out[backbone] = r
        return out

    b = section("b", "sslab train_epoch vs bare PyTorch loop, bf16", step_vs_bare)
    if b:
        for backbone, r in b.items():
            if not r["ok"]:
                report["ok"] = False
                report["failed"].append(f"b: {backbone} ratio {r['ratio']:.3f} < {args.min_ratio}")
    if device.type == "cuda":
        torch.cuda.empty_cache()

    c = section("c", "six losses, forward + backward under bf16 autocast", lambda: loss_checks(device, 64 if q else 256, log))
    if c and not c["ok"]:
        report["ok"] = False
        report["failed"].append("c: " + ", ".join(k for k, v in c["losses"].items() if not v["ok"]))

    report["seconds"] = round(time.perf_counter() - t_start, 1)
    log(f"\n== summary [{report['seconds']} s]: {'ALL OK' if report['ok'] else 'FAILED: ' + '; '.join(report['failed'])}")
    if info:
        log(f"  {info.get('gpu', device)}; torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}")
    if a:
        log(f"  (a) fp32 {a['fp32_images_per_s']:.0f} img/s, bf16 {a['bf16_images_per_s']:.0f} img/s, "
            f"speedup {a['bf16_over_fp32']:.2f}x")
    if b:
        for backbone, r in b.items():
            log(f"  (b) {backbone}: sslab/bare {r['ratio']:.3f} ({r['sslab_images_per_s']:.0f} vs "
                f"{r['bare_images_per_s']:.0f} img/s)")
    if c:
        log(f"  (c) losses: {'all ok' if c['ok'] else 'FAILED'}; nt_xent bf16 vs fp32 rel diff loss "
            f"{c['losses']['nt_xent']['loss_rel_diff']:.2e}, grad {c['losses']['nt_xent']['grad_rel_diff']:.2e}")
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "gpu_check.json"), "w") as handle:
            json.dump(report, handle, indent=1, default=str)
        log(f"  wrote {os.path.join(out_dir, 'gpu_check.json')}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
