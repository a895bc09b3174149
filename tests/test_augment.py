import pytest
import torch

from workloads.augment import CIFAR10_MEAN, CIFAR10_STD, SimCLRAugment, normalize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # outputs stay in [0, 1]


def _images(batch=8, height=32, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtype_device(device, fused):
    aug = SimCLRAugment(image_size=24, blur_p=0.5, fused=fused)
    for x in (_images(5, 40, 36).to(device), _images(5, 40, 36).to(device).float() / 255):
        v1, v2 = aug(x)
        for v in (v1, v2):
            assert v.shape == (5, 3, 24, 24)
            assert v.dtype == torch.float32
            assert v.device.type == device
            assert torch.isfinite(v).all()


@pytest.mark.parametrize("fused", [False, True])
def test_empty_batch(fused):
    v1, v2 = SimCLRAugment(fused=fused)(_images(0))
    assert v1.shape == v2.shape == (0, 3, 32, 32)


@pytest.mark.parametrize("fused", [False, True])
def test_two_views_differ(fused):
    torch.manual_seed(0)
    v1, v2 = SimCLRAugment(fused=fused)(_images())
    assert not torch.allclose(v1, v2)
    # every sample differs between its two views
    assert ((v1 - v2).abs().flatten(1).amax(1) > 1e-3).all()


def test_per_sample_parameters_differ_within_batch():
    x = _images(1).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    torch.manual_seed(0)
    # crop only: no flip, jitter, grayscale
    v, _ = SimCLRAugment(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)(x)
    distinct = {tuple(row.flatten()[:64].tolist()) for row in v}
    assert len(distinct) >= 15  # own crop per sample
    torch.manual_seed(0)
    v, _ = SimCLRAugment()(x)
    assert len({tuple(row.flatten()[:64].tolist()) for row in v}) == 16


@pytest.mark.parametrize("fused", [False, True])
def test_reproducible_under_manual_seed(fused):
    aug = SimCLRAugment(blur_p=0.5, fused=fused)
    x = _images()
    torch.manual_seed(123)
    a1, a2 = aug(x)
    torch.manual_seed(123)
    b1, b2 = aug(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    c1, _ = aug(x)
    assert not torch.equal(a1, c1)


def test_flip_only_is_exact():
    x = _images()
    aug = SimCLRAugment(crop_scale=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, grayscale_p=0.0)
    v1, v2 = aug(x)
    expected = normalize(x.flip(-1))
    torch.testing.assert_close(v1, expected, rtol=0, atol=0)
    torch.testing.assert_close(v2, expected, rtol=0, atol=0)
    # zero jitter strength is the same as no jitter
    aug = SimCLRAugment(crop_scale=(1.0, 1.0), flip_p=1.0, jitter=(0, 0, 0, 0), jitter_p=1.0, grayscale_p=0.0)
    torch.testing.assert_close(aug(x)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_grayscale_gives_equal_channels(fused):
    torch.manual_seed(0)
    v1, v2 = SimCLRAugment(grayscale_p=1.0, fused=fused, **IDENTITY)(_images())
    for v in (v1, v2):
        assert torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 1], v[:, 2])
        assert v.min() >= 0 and v.max() <= 1


def test_brightness_is_a_per_sample_factor():
    # values in [0.2, 0.6]: brightness factors in [0.6, 1.4] never clip
    x = 0.2 + 0.4 * torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    aug = SimCLRAugment(crop_scale=(1.0, 1.0), flip_p=0.0, jitter=(0.4, 0, 0, 0), jitter_p=1.0, grayscale_p=0.0, **IDENTITY)
    torch.manual_seed(0)
    v, _ = aug(x)
    factor = (v / x).flatten(1)
    torch.testing.assert_close(factor.amin(1), factor.amax(1), rtol=1e-4, atol=1e-4)
    f = factor[:, 0]
    assert ((f >= 0.6 - 1e-5) & (f <= 1.4 + 1e-5)).all()
    assert len(set(f.tolist())) == 8


@pytest.mark.parametrize(
    "kwargs",
    [dict(jitter_p=0.0, grayscale_p=0.0), dict(jitter_p=0.0, grayscale_p=1.0)]
    + [dict(jitter=tuple(0.4 if i == k else 0.0 for i in range(4)), jitter_p=0.7, grayscale_p=0.0) for k in range(3)],
    ids=["crop_flip", "grayscale", "brightness", "contrast", "saturation"],
)
def test_fused_matches_op_by_op(kwargs):
    """Same seed, same parameters: the one-resampling crop and the one-matrix colour give the op-by-op
    views (hue is where they differ: a rotation about the gray axis, not an HSV shift)."""
    x = 0.1 + 0.8 * torch.rand(16, 3, 40, 36, generator=torch.Generator().manual_seed(2))  # no clipping
    torch.manual_seed(5)
    expected = SimCLRAugment(image_size=32, **kwargs)(x)
    torch.manual_seed(5)
    fused = SimCLRAugment(image_size=32, fused=True, **kwargs)(x)
    for got, want in zip(fused, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_fused_hue_keeps_gray_gray_and_colours_in_range():
    gray = torch.full((8, 3, 32, 32), 0.3)
    colour = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    aug = SimCLRAugment(flip_p=0.0, jitter=(0, 0, 0, 0.5), jitter_p=1.0, grayscale_p=0.0, fused=True, **IDENTITY)
    torch.manual_seed(0)
    torch.testing.assert_close(aug(gray)[0], gray, rtol=0, atol=1e-5)  # rotation about the gray axis
    torch.manual_seed(0)
    shifted, _ = aug(colour)
    assert shifted.min() >= 0 and shifted.max() <= 1
    plain = SimCLRAugment(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, fused=True, **IDENTITY)
    torch.manual_seed(0)
    moved = (shifted - plain(colour)[0]).abs().flatten(1).amax(1) > 0.05
    assert moved.sum() >= 6  # shifts are uniform in [-0.5, 0.5] turns: nearly every sample's hue moved


def test_blur_changes_the_image():
    x = _images()
    torch.manual_seed(0)
    plain, _ = SimCLRAugment(blur_p=0.0)(x)
    torch.manual_seed(0)  # same parameter draws: only the blur differs
    blurred, _ = SimCLRAugment(blur_p=1.0)(x)
    changed = (plain - blurred).abs().flatten(1).amax(1) > 1e-2
    # sigma is drawn from [0.1, 2]: near 0.1 a 3-tap kernel is nearly the identity
    assert changed.sum() >= 4


def test_normalize():
    x = _images()
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    out = normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(normalize(x.float() / 255), expected)
    torch.testing.assert_close(normalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), x.float() / 127.5 - 1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(flip_p=1.5), "flip_p"),
        (dict(jitter_p=-0.1), "jitter_p"),
        (dict(grayscale_p=2), "grayscale_p"),
        (dict(blur_p=-1), "blur_p"),
        (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
        (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
        (dict(crop_scale=(0.2, 1.5)), "crop_scale"),
        (dict(crop_scale=(0.2,)), "crop_scale"),
        (dict(image_size=4), "image_size"),
        (dict(image_size=32.0), "image_size"),
        (dict(jitter=(0.4, 0.4, 0.4, 0.6)), "jitter"),
        (dict(jitter=(-0.1, 0.4, 0.4, 0.1)), "jitter"),
        (dict(mean=(0.5, 0.5)), "mean"),
        (dict(std=(0.2, 0.2, 0.2, 0.2)), "std"),
        (dict(std=(0.2, 0.0, 0.2)), "std"),
        (dict(fused="yes"), "fused"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        SimCLRAugment(**kwargs)
    assert any(s in str(info.value) for s in ("[0, 1]", "<=", ">=", "> 0", "3 numbers", "true or false"))


def test_normalize_invalid_arguments():
    with pytest.raises(ValueError, match="mean"):
        normalize(_images(), mean=(0.5,))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        normalize(torch.zeros(3, 32, 32))
