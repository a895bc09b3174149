"""Label propagation by feature attention, and the region similarity J that scores it.

The evaluation protocol of Jabri et al. 2020 ("Space-Time Correspondence as a Contrastive Random
Walk", after Wang et al. 2019 and Li et al. 2019), simplified: a frozen encoder gives every frame a
spatial feature map (workloads.video.features.feature_map, stride 4), the object masks of the first
frame are given, and every later frame takes its labels from the pixels it most resembles in the
first frame and in the few frames predicted just before it. No training happens here: a good
score says the features match the same physical point across frames, which is what a video
self-supervised task should teach and what a pooled-feature kNN cannot see.

    pred = propagate(encoder, clip, first_mask)      # long [T, H, W], frame 0 = first_mask
    j = region_similarity(pred[1:], true[1:])         # mean IoU over objects and frames
    j_mean(encoder, clips, masks)                     # averaged over clips
    copy_first_frame_j(masks)                         # the baseline that never moves the mask

Defaults follow the CRW evaluation (top-k 5 ... 10, temperature 0.07, a short context of recent
frames) scaled down to the small clips this project trains on.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from workloads.video.features import feature_map

QUERY_CHUNK = 1024  # query pixels scored at once: the affinity is [chunk, sources], bounded memory


def region_similarity(pred: torch.Tensor, true: torch.Tensor) -> float:
    """J: the intersection over union of each object's predicted and true region, averaged over all
    (frame, object) pairs; pred and true: integer masks [T, H, W] or [H, W], 0 = background, k > 0 = object k.

    Which pairs count, per frame: every id > 0 in the true mask or the prediction. An object the
    prediction misses scores 0 (intersection 0), and so does an id predicted but absent from the
    truth (a false positive must cost something, or predicting extra objects would be free); an id
    absent from both is skipped (nothing to find, nothing wrongly found). NaN when no pair counts
    (every frame background in both): there is nothing to score, and callers skip it.
    """
    if pred.shape != true.shape or pred.dim() not in (2, 3):
        raise ValueError(f"pred and true must both be [T, H, W] or [H, W] masks of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(true.shape)}")
    if pred.is_floating_point() or true.is_floating_point():
        raise ValueError(f"masks must hold integer ids, got {pred.dtype} and {true.dtype}")
    pred, true = pred.long().cpu(), true.long().cpu()
    if pred.dim() == 2:
        pred, true = pred[None], true[None]
    ids = torch.unique(torch.cat([pred.unique(), true.unique()]))
    ids = ids[ids > 0]
    total, pairs = 0.0, 0
    for k in ids.tolist():
        p, t = pred == k, true == k
        inter = (p & t).flatten(1).sum(1)
        union = (p | t).flatten(1).sum(1)
        present = union > 0  # the frames where object k is in either mask
        total += float((inter[present].double() / union[present].double()).sum())
        pairs += int(present.sum())
    return total / pairs if pairs else math.nan


def _one_hot_grid(mask: torch.Tensor, ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label mask [H, W] -> the share of each id's pixels in every feature-grid cell, [h*w, K]."""
    one_hot = (mask[None] == ids.view(-1, 1, 1)).float()  # [K, H, W]
    return F.adaptive_avg_pool2d(one_hot[None], size)[0].flatten(1).T  # area average: soft at object borders


def _window(size: tuple[int, int], frames: int, radius: float, device: torch.device) -> torch.Tensor:
    """[h*w, frames*h*w] bool: source cell within `radius` grid cells (each axis) of the query cell."""
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    near = ((yy[:, None] - yy[None]).abs() <= radius) & ((xx[:, None] - xx[None]).abs() <= radius)
    return near.repeat(1, frames)


def _device_of(encoder: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(encoder.parameters(), None)
    return parameter.device if parameter is not None else fallback


@torch.no_grad()
def propagate(encoder: nn.Module, clip: torch.Tensor, first_mask: torch.Tensor, *, topk: int = 5,
              temperature: float = 0.07, context: int = 4, radius: float | None = None) -> torch.Tensor:
    """Propagate `first_mask` (long [H, W], ids >= 0) through `clip` (float [T, 3, H, W], normalised as
    the encoder was trained); returns long [T, H, W] on the CPU, frame 0 = first_mask.

    Frame t's labels come from frame 0 (ground truth: it keeps the objects from drifting away) and the
    `context` frames predicted just before t (they follow the objects' motion and appearance change).
    Each pixel of t's feature grid attends to its `topk` most cosine-similar source cells (softmax of
    similarity / `temperature`, the rest get no weight: a few good matches beat an average over many
    poor ones); its label distribution is the weighted mean of theirs, upsampled bilinearly to H, W,
    and the argmax wins. `radius` (None: anywhere) limits the sources to cells at most that many grid
    cells away along each axis (objects move little between frames; it removes far look-alikes).
    The encoder runs in eval mode (its mode is restored) on its own device.
    """
    if clip.dim() != 4 or clip.shape[1] != 3 or first_mask.shape != clip.shape[-2:]:
        raise ValueError(f"clip must be [T, 3, H, W] and first_mask [H, W] of the same size, got "
                         f"{tuple(clip.shape)} and {tuple(first_mask.shape)}")
    if topk < 1 or not temperature > 0 or context < 0 or (radius is not None and radius < 0):
        raise ValueError(f"need topk >= 1, temperature > 0, context >= 0, radius >= 0 or None; got topk={topk}, "
                         f"temperature={temperature}, context={context}, radius={radius}")
    device = _device_of(encoder, clip.device)
    frames, height, width = clip.shape[0], clip.shape[-2], clip.shape[-1]
    was_training = encoder.training
    encoder.eval()
    try:
        feats = feature_map(encoder, clip.to(device)).float()  # [T, C, h, w]
    finally:
        encoder.train(was_training)
    grid = tuple(feats.shape[-2:])
    feats = F.normalize(feats, dim=1).flatten(2).transpose(1, 2)  # [T, h*w, C], unit length per cell
    first_mask = first_mask.long().to(device)
    ids = first_mask.unique()  # the labels to propagate, background (0) included if present
    pred = torch.empty(frames, height, width, dtype=torch.long, device=device)
    pred[0] = first_mask
    labels = [_one_hot_grid(first_mask, ids, grid)]  # [h*w, K] per frame already labelled
    window = {}
    for t in range(1, frames):
        sources = [0] + list(range(max(1, t - context), t))
        keys = feats[sources].reshape(-1, feats.shape[-1])  # [S*h*w, C]
        values = torch.cat([labels[s] for s in sources])  # [S*h*w, K]
        if radius is not None and len(sources) not in window:
            window[len(sources)] = _window(grid, len(sources), radius, device)
        k = min(topk, keys.shape[0])
        out = []
        for start in range(0, feats.shape[1], QUERY_CHUNK):
            scores = feats[t, start : start + QUERY_CHUNK] @ keys.T  # cosine similarities [q, S*h*w]
            if radius is not None:
                scores = scores.masked_fill(~window[len(sources)][start : start + QUERY_CHUNK], -math.inf)
            top, index = scores.topk(k, dim=1)
            weights = torch.softmax(top / temperature, dim=1)  # cells outside the window: weight 0
            out.append((weights[..., None] * values[index]).sum(1))  # [q, K]
        soft = torch.cat(out).T.reshape(1, len(ids), *grid)
        soft = F.interpolate(soft, size=(height, width), mode="bilinear", align_corners=False)[0]
        pred[t] = ids[soft.argmax(0)]
        labels.append(_one_hot_grid(pred[t], ids, grid))
    return pred.cpu()


def _clip_mean(scores: list[float]) -> float:
    """Mean of the clips' J, leaving out the clips with nothing to score (NaN); NaN if none is left."""
    scores = [s for s in scores if not math.isnan(s)]
    return sum(scores) / len(scores) if scores else math.nan


def _masks_of(masks: torch.Tensor) -> torch.Tensor:
    if masks.dim() != 4 or masks.shape[1] < 2:
        raise ValueError(f"masks must be [N, T, H, W] with T >= 2, got {tuple(masks.shape)}")
    return masks.long().cpu()


def j_mean(encoder: nn.Module, clips_normalised: torch.Tensor, masks: torch.Tensor, **knobs) -> float:
    """Mean J of `propagate` (knobs: topk, temperature, context, radius) over frames 1..T-1 of each clip
    (frame 0 is given, so it is not scored), then over clips. clips_normalised: float [N, T, 3, H, W];
    masks: integer [N, T, H, W]. Clips without any object in frames 1..T-1 nor predicted are left out."""
    masks = _masks_of(masks)
    if clips_normalised.shape[:2] != masks.shape[:2] or clips_normalised.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"clips {tuple(clips_normalised.shape)} and masks {tuple(masks.shape)} do not match")
    scores = []
    for clip, mask in zip(clips_normalised, masks):
        pred = propagate(encoder, clip, mask[0], **knobs)
        scores.append(region_similarity(pred[1:], mask[1:]))
    return _clip_mean(scores)


def copy_first_frame_j(masks: torch.Tensor) -> float:
    """The J of predicting every frame's mask to be the first frame's (the floor a propagation must
    beat: a still scene scores 1, motion lowers it), averaged as in `j_mean`. masks: [N, T, H, W]."""
    masks = _masks_of(masks)
    return _clip_mean([region_similarity(mask[:1].expand_as(mask[1:]), mask[1:]) for mask in masks])
