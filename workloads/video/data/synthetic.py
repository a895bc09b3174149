"""Synthetic moving objects: clips whose object masks and trajectories are known exactly.

Each clip: a textured background (smooth colour waves plus stripes, different per clip, panning
slowly) and `objects` sprites cut from CIFAR images (resized to ~0.4 x size, elliptical alpha with a
one-pixel soft edge), each moving at constant velocity (1-3 px/frame at size 32, scaled with size)
and bouncing off the borders, drawn in order so later objects occlude earlier ones. The tracking and
label-propagation scores need ground truth that real video does not come with; this gives it.

Sprites sit at integer pixel positions, so an object's mask is exactly its ellipse and the track (the
ellipse centre) is exactly the centroid of its unoccluded mask.

Played backwards such a clip is another valid clip of the same kind (constant velocity, bounces and a
steady pan are all time-symmetric), so on its own it holds no arrow of time. ``friction`` adds one (off,
0, by default): each object loses that fraction of its speed every frame (speed v at the first step,
v * (1 - friction)^t at step t; the bounces keep the speed), so objects slow down as time runs forward
and would speed up, unprompted, played backward. The drawn speed is the first step's. Masks and tracks
follow the slowing objects as they do the others.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from urllib.parse import parse_qs, urlsplit

import torch
import torch.nn.functional as F

from workloads.data.errors import DataError
from workloads.data.parquet import load_parquet
from workloads.video.dataset import VideoDataset

DEFAULT_SPRITES = "examples/data/cifar10_sample.parquet"
PARAMETERS = ("clips", "frames", "size", "objects", "seed", "friction", "sprites")


def moving_objects(sprites: torch.Tensor, sprite_labels: torch.Tensor, *, clips: int, frames: int, size: int,
                   objects: int = 2, seed: int = 0, friction: float = 0.0,
                   classes: list[str] | None = None) -> VideoDataset:
    """`clips` clips of `frames` frames of size x size (see the module docstring); all seeded by `seed`.

    sprites: uint8 [M, 3, h, w]; sprite_labels: int64 [M]. labels = the class of object 1's sprite.
    friction: the fraction of its speed an object loses each frame, in [0, 1) (0: constant speed); it
    changes how far the objects travel, not what is drawn from the seed.
    """
    if size < 8 or clips < 1 or frames < 1 or objects < 1 or len(sprites) == 0 or not 0.0 <= friction < 1.0:
        raise DataError(f"moving_objects: needs size >= 8, clips, frames, objects >= 1, 0 <= friction < 1 and at "
                        f"least one sprite; got size={size}, clips={clips}, frames={frames}, objects={objects}, "
                        f"friction={friction}, {len(sprites)} sprites")
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # one seeded stream, drawn in a fixed order
    n, t, s, k = clips, frames, size, objects
    tile = max(3, round(size * 0.4))
    pick = torch.randint(len(sprites), (n, k), generator=generator)
    tiles = F.interpolate(sprites[pick.flatten()].float(), size=(tile, tile), mode="bilinear", antialias=True,
                          align_corners=False).view(n, k, 3, tile * tile)
    # elliptical alpha: 1 inside, 0.5 on the ellipse, 0 a pixel outside; the mask (alpha >= 0.5) is the ellipse
    radii = (0.75 + 0.25 * rand(n, k, 2)) * tile / 2
    offset = torch.arange(tile) - (tile - 1) / 2
    r = ((offset[:, None] / radii[..., 0, None, None]) ** 2 + (offset / radii[..., 1, None, None]) ** 2).sqrt()
    alpha = ((1 - r) * radii.min(-1).values[..., None, None] + 0.5).clamp(0, 1).view(n, k, 1, tile * tile)
    # constant velocity (or slowing by friction), bouncing: fold the straight path into [0, room] (a triangle wave)
    room = s - tile
    angle = 2 * math.pi * rand(n, k)
    speed = (1 + 2 * rand(n, k)) * size / 32
    velocity = torch.stack([angle.sin(), angle.cos()], -1) * speed[..., None]               # [n, k, 2]
    steps = torch.arange(t, dtype=torch.float64)
    if friction:  # the distance covered by frame i at speeds 1, r, r^2, ... (r = 1 - friction): (1 - r^i) / (1 - r)
        steps = (1 - (1 - friction) ** steps) / friction
    straight = rand(n, k, 1, 2) * room + velocity[:, :, None] * steps.float()[:, None]
    corner = (room - (straight % (2 * room) - room).abs()).round().long()                   # [n, k, t, 2] top-left
    tracks = corner.float() + (tile - 1) / 2
    video = _background(n, t, s, rand)                                                      # [n, t, 3, s * s]
    masks = torch.zeros(n, t, 1, s * s, dtype=torch.uint8)
    within = (torch.arange(tile)[:, None] * s + torch.arange(tile)).flatten()               # a tile's pixels, flat
    for obj in range(k):  # blend only the tile's pixels (sprites never leave the frame): gather, mix, scatter
        at = (corner[:, obj, :, 0, None] * s + corner[:, obj, :, 1, None] + within)[:, :, None]  # [n, t, 1, tile^2]
        a = alpha[:, obj, None]
        region = video.gather(-1, at.expand(n, t, 3, -1))
        video.scatter_(-1, at.expand(n, t, 3, -1), region * (1 - a) + tiles[:, obj, None] * a)
        masks.scatter_(-1, at, torch.where(a >= 0.5, obj + 1, masks.gather(-1, at)).to(torch.uint8))
    settings = {"generator": "moving_objects", "version": 1, "clips": n, "frames": t, "size": s, "objects": k,
                "seed": seed, **({"friction": friction} if friction else {})}  # none: the hash it always had
    digest = hashlib.sha256(json.dumps(settings).encode())
    digest.update(sprites.contiguous().numpy().tobytes())
    digest.update(sprite_labels.to(torch.int64).contiguous().numpy().tobytes())
    names = [f"synthetic{i}" for i in range(n)]
    labels = sprite_labels[pick[:, 0]].to(torch.int64)
    return VideoDataset(video.round_().clamp_(0, 255).to(torch.uint8).view(n, t, 3, s, s), names, list(names),
                        digest.hexdigest(), labels,
                        list(classes) if classes else [str(c) for c in range(int(sprite_labels.max()) + 1)],
                        masks.view(n, t, s, s), tracks, origin="")


def _background(n: int, t: int, s: int, rand) -> torch.Tensor:
    """float [n, t, 3, s * s] in 0..255: a base colour, three smooth colour waves and stripes, drawn once
    per clip on a larger canvas and panned across it at under half a pixel per frame (whole pixels; the
    objects, not the background, carry most of the motion)."""
    margin = math.ceil((t - 1) / 2)
    width = s + 2 * margin
    y, x = torch.arange(width, dtype=torch.float32)[:, None], torch.arange(width, dtype=torch.float32)
    canvas = (60 + 140 * rand(n, 3, 1, 1)).expand(n, 3, width, width).clone()
    for _ in range(3):  # smooth waves: 0.5-2 cycles per frame width, a random colour each
        frequency = (0.5 + 1.5 * rand(n, 2)) * 2 * math.pi / s * torch.sign(rand(n, 2) - 0.5)
        phase = frequency[:, 0, None, None] * y + frequency[:, 1, None, None] * x + 2 * math.pi * rand(n, 1, 1)
        canvas += phase.sin()[:, None] * (40 * (rand(n, 3, 1, 1) - 0.5))
    angle, period = math.pi * rand(n, 1, 1), 3 + 4 * rand(n, 1, 1)                            # stripes 3-7 px
    stripes = torch.sign(torch.sin(2 * math.pi * (angle.sin() * y + angle.cos() * x) / period))
    canvas = (canvas + stripes[:, None] * (25 * rand(n, 3, 1, 1))).clamp(0, 255).view(n, 1, 3, width * width)
    shift = ((rand(n, 1, 2) - 0.5) * torch.arange(t, dtype=torch.float32)[:, None]).round().long() + margin
    window = (torch.arange(s)[:, None] * width + torch.arange(s)).flatten()
    at = (shift[..., 0, None] * width + shift[..., 1, None] + window)[:, :, None]              # [n, t, 1, s * s]
    return canvas.expand(n, t, 3, -1).gather(-1, at.expand(n, t, 3, -1))


def load_synthetic(uri: str, *, clip_frames: int, image_size: int, s3_endpoint_url: str | None = None) -> VideoDataset:
    """synthetic:moving_objects?clips=200&frames=16&size=32&objects=2&seed=0&friction=0&sprites=PATH

    frames and size default to data.clip_frames and data.image_size (and must equal them when given);
    friction (the share of speed lost per frame, an arrow of time; see the module docstring) defaults to
    0, none; sprites defaults to the CIFAR-10 sample Parquet, relative to the working directory.
    """
    parts = urlsplit(uri)
    query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - set(PARAMETERS))
    if parts.path != "moving_objects" or unknown:
        problem = f"unknown parameters {unknown}" if unknown else f"unknown generator {parts.path!r}"
        expected = "&".join(f"{p}=..." for p in PARAMETERS)
        raise DataError(f"{uri}: {problem}; expected synthetic:moving_objects?{expected}")
    try:
        values = {key: int(query.get(key, default)) for key, default in
                  (("clips", 200), ("frames", clip_frames), ("size", image_size), ("objects", 2), ("seed", 0))}
        friction = float(query.get("friction", 0.0))
    except ValueError:
        raise DataError(f"{uri}: clips, frames, size, objects and seed must be integers, friction a number") from None
    if not 0.0 <= friction < 1.0:
        raise DataError(f"{uri}: friction={friction}: the share of speed lost per frame must be in [0, 1)")
    for key, setting, wanted in (("frames", "data.clip_frames", clip_frames), ("size", "data.image_size", image_size)):
        if values[key] != wanted:
            raise DataError(f"{uri}: {key}={values[key]} but {setting} is {wanted}; drop {key}= from the URI "
                            f"(it defaults to {setting}) or make them equal")
    sprites = query.get("sprites", DEFAULT_SPRITES)
    if not sprites.startswith("s3://") and not os.path.isfile(sprites):
        raise DataError(f"{uri}: sprites file {sprites!r} not found (relative to {os.getcwd()}); set sprites=PATH "
                        "to a Parquet of images and labels, e.g. examples/data/cifar10_sample.parquet")
    images = load_parquet(sprites, s3_endpoint_url=s3_endpoint_url)
    dataset = moving_objects(images.images, images.labels, classes=images.classes, friction=friction, **values)
    dataset.origin = uri
    return dataset
