"""workloads.losses against the loop references (tests/reference_losses.py), edge cases,
pytorch-metric-learning, and the shape checks."""

import re
import types

import pytest
import torch

try:  # tests/ as a package or as a plain directory on sys.path
    from . import reference_losses as ref
except ImportError:
    import reference_losses as ref
from workloads.losses import (
    contrastive_loss,
    info_nce_loss,
    lifted_structured_loss,
    npair_loss,
    nt_xent_loss,
    triplet_loss,
)


def _x_labels(g, n, d, scale=1.0):
    x = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    return [x], [torch.randint(0, 3, (n,), generator=g)]


def _randn(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


# Each case: (loss, reference, make(gen, n, d) -> (tensor args, other args)). Float64 inputs.
# Scales and margins are chosen so that hinges are active for some pairs and not for others.
CASES = {
    "contrastive": (
        lambda x, y: contrastive_loss(x, y, 3.0),
        lambda x, y: ref.contrastive_ref(x, y, 3.0),
        lambda g, n, d: _x_labels(g, n, d),
    ),
    "triplet": (
        lambda a, p, n: triplet_loss(a, p, n, 1.0),
        lambda a, p, n: ref.triplet_ref(a, p, n, 1.0),
        lambda g, n, d: ([_randn(g, n, d) for _ in range(3)], []),
    ),
    "lifted": (
        lambda x, y: lifted_structured_loss(x, y, 1.0),
        lambda x, y: ref.lifted_structured_ref(x, y, 1.0),
        lambda g, n, d: _x_labels(g, n, d, scale=0.4),
    ),
    "npair": (
        npair_loss,
        ref.npair_ref,
        lambda g, n, d: ([_randn(g, n, d), _randn(g, n, d), _randn(g, n, 3, d)], []),
    ),
    "info_nce_shared": (
        lambda q, p, k: info_nce_loss(q, p, k, 0.5),
        lambda q, p, k: ref.info_nce_ref(q, p, k, 0.5),
        lambda g, n, d: ([_randn(g, n, d), _randn(g, n, d), _randn(g, 5, d)], []),
    ),
    "info_nce_per_row": (
        lambda q, p, k: info_nce_loss(q, p, k, 0.5),
        lambda q, p, k: ref.info_nce_ref(q, p, k, 0.5),
        lambda g, n, d: ([_randn(g, n, d), _randn(g, n, d), _randn(g, n, 4, d)], []),
    ),
    "info_nce_in_batch": (
        lambda q, p: info_nce_loss(q, p, None, 0.5),
        lambda q, p: ref.info_nce_ref(q, p, None, 0.5),
        lambda g, n, d: ([_randn(g, n, d), _randn(g, n, d)], []),
    ),
    "nt_xent": (
        lambda z1, z2: nt_xent_loss(z1, z2, 0.5),
        lambda z1, z2: ref.nt_xent_ref(z1, z2, 0.5),
        lambda g, n, d: ([_randn(g, n, d), _randn(g, n, d)], []),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed,n,d", [(0, 2, 3), (1, 6, 4), (2, 9, 5), (3, 12, 2)])
def test_matches_loop_reference(name, seed, n, d):
    fn, reference, make = CASES[name]
    tensors, others = make(torch.Generator().manual_seed(seed), n, d)
    tensors = [t.requires_grad_() for t in tensors]
    got, want = fn(*tensors, *others), reference(*tensors, *others)
    assert got.dtype == torch.float64 and got.shape == ()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got_grads = torch.autograd.grad(got, tensors, allow_unused=True)
    want_grads = [None] * len(tensors)  # a reference that is a constant (e.g. no pair) has none
    if want.requires_grad:
        want_grads = torch.autograd.grad(want, tensors, allow_unused=True)
    for t, g_got, g_want in zip(tensors, got_grads, want_grads):
        g_got = torch.zeros_like(t) if g_got is None else g_got
        g_want = torch.zeros_like(t) if g_want is None else g_want
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_give_float32_loss(name, dtype):
    fn, _, make = CASES[name]
    tensors, others = make(torch.Generator().manual_seed(0), 6, 4)
    low = [t.to(dtype).requires_grad_() for t in tensors]
    loss = fn(*low, *others)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(t.grad is None or t.grad.dtype == dtype for t in low)
    exact = fn(*[t.detach().double() for t in low], *others)  # same rounded inputs, in float64
    torch.testing.assert_close(loss.double(), exact, rtol=1e-4, atol=1e-4)


def test_info_nce_negative_layouts_agree():
    g = torch.Generator().manual_seed(0)
    q, p, k = _randn(g, 5, 3), _randn(g, 5, 3), _randn(g, 7, 3)
    shared = info_nce_loss(q, p, k, 0.3)
    torch.testing.assert_close(shared, info_nce_loss(q, p, k.expand(5, 7, 3), 0.3))
    others = torch.stack([p[[j for j in range(5) if j != b]] for b in range(5)])  # [B, B-1, D]
    torch.testing.assert_close(info_nce_loss(q, p, None, 0.3), info_nce_loss(q, p, others, 0.3))


# ---- edge cases -------------------------------------------------------------------------


def _finite_loss_and_grads(loss, tensors):
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    assert torch.isfinite(loss), loss
    for g in grads:
        assert g is None or torch.isfinite(g).all(), g


def test_contrastive_one_class_is_mean_squared_distance():
    x = _randn(torch.Generator().manual_seed(0), 5, 3)
    y = torch.zeros(5, dtype=torch.long)
    d2 = torch.pdist(x).pow(2)  # the 10 unordered pairs
    for margin in (0.1, 100.0):  # only positive pairs: the margin plays no part
        torch.testing.assert_close(contrastive_loss(x, y, margin), d2.mean())


def test_contrastive_duplicates_give_margin_squared_and_finite_grads():
    x = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64).repeat(4, 1).requires_grad_()
    y = torch.tensor([0, 1, 2, 3])  # all pairs are negatives at distance exactly 0
    loss = contrastive_loss(x, y, 2.0)
    torch.testing.assert_close(loss, torch.tensor(4.0, dtype=torch.float64))
    _finite_loss_and_grads(loss, [x])


def test_lifted_one_class_is_zero():
    # Positive pairs share a label, so both sides of L_ij have the same negatives: with one
    # class neither side has any, the max is over an empty set (-inf) and every term is 0.
    x = _randn(torch.Generator().manual_seed(0), 5, 3).requires_grad_()
    loss = lifted_structured_loss(x, torch.zeros(5, dtype=torch.long), 1e6)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.equal(grad, torch.zeros_like(x))
    assert ref.lifted_structured_ref(x, torch.zeros(5, dtype=torch.long), 1e6).item() == 0.0


@pytest.mark.parametrize("n", [1, 4])
def test_lifted_no_positive_pair_is_zero(n):
    x = _randn(torch.Generator().manual_seed(0), n, 3).requires_grad_()
    loss = lifted_structured_loss(x, torch.arange(n), 1.0)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, x)  # still part of the graph
    assert torch.equal(grad, torch.zeros_like(x))


def test_lifted_single_pair_by_hand():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # P = {(0, 1)}: D_01 = 1; negatives: D_02 = 4, D_12 = 5 -> max(m - 4, m - 5) = m - 4
    loss = lifted_structured_loss(x, torch.tensor([0, 0, 1]), 5.0)
    want = torch.tensor((1.0 + 5.0 - 4.0) ** 2 / 2, dtype=torch.float64)
    torch.testing.assert_close(loss, want)


def _dup(g, *shape, integers=False):  # the first half of the rows repeated as the second half
    # Integer values make squared distances exactly 0 (the zero-distance gradient path); normal
    # values leave the rounding noise of the dot-product form instead.
    if integers:
        t = torch.randint(-3, 4, shape, generator=g).float()
    else:
        t = torch.randn(*shape, generator=g)
    return torch.cat([t, t])


_LABELS = torch.tensor([0, 1, 0, 0, 1, 2])  # rows 2 and 5: a negative pair at distance 0
DUPLICATED = {  # name -> (shapes of the inputs, each [3, ...] doubled to [6, ...]; the loss)
    "contrastive": ([(3, 4)], lambda x: contrastive_loss(x, _LABELS, 1.0)),
    "triplet": ([(3, 4)] * 3, lambda a, p, n: triplet_loss(a, p, n, 1.0)),
    "lifted": ([(3, 4)], lambda x: lifted_structured_loss(x, _LABELS, 1.0)),
    "npair": ([(3, 4), (3, 4), (3, 2, 4)], npair_loss),
    "info_nce": ([(3, 4)] * 3, lambda q, p, k: info_nce_loss(q, p, k, 0.01)),
    "info_nce_in_batch": ([(3, 4)] * 2, lambda q, p: info_nce_loss(q, p, None, 0.01)),
    "nt_xent": ([(3, 4)] * 2, lambda z1, z2: nt_xent_loss(z1, z2, 0.01)),
}


@pytest.mark.parametrize("name", list(DUPLICATED))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 1e3])  # 1e3 with temperature 0.01: logits ~1e8
@pytest.mark.parametrize("integers", [False, True])
def test_duplicates_and_large_logits_stay_finite(name, dtype, scale, integers):
    shapes, fn = DUPLICATED[name]
    g = torch.Generator().manual_seed(0)
    tensors = [
        (scale * _dup(g, *shape, integers=integers)).to(dtype).requires_grad_() for shape in shapes
    ]
    _finite_loss_and_grads(fn(*tensors), tensors)


# ---- against pytorch-metric-learning ---------------------------------------------------



@pytest.fixture
def pml():
    """pytorch_metric_learning's losses, distances and reducers (a dev dependency)."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, reducers

    return types.SimpleNamespace(
        losses=losses,
        dot=distances.DotProductSimilarity(normalize_embeddings=False),
        sq_euclid=distances.LpDistance(normalize_embeddings=False, power=2),
        mean=reducers.MeanReducer(),
    )


def _assert_same_value_and_grads(got, want, tensors):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got, tensors), torch.autograd.grad(want, tensors)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nt_xent_matches_pml(pml, seed):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = (_randn(g, 8, 5).requires_grad_() for _ in range(2))
    # pml: labels pair row i of z1 with row i of z2; every other row is a negative; the diagonal
    # is excluded; MeanReducer over the 2B positive pairs. Dot products without normalisation,
    # as ours (pml's default CosineSimilarity normalises).
    labels = torch.arange(8).repeat(2)
    loss = pml.losses.NTXentLoss(0.2, distance=pml.dot, reducer=pml.mean)
    want = loss(torch.cat([z1, z2]), labels)
    _assert_same_value_and_grads(nt_xent_loss(z1, z2, 0.2), want, [z1, z2])
    # and the SimCLR (cosine) form: normalise, then compare with pml's default distance
    n1, n2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    cosine = pml.losses.NTXentLoss(0.2)(torch.cat([z1, z2]), labels)
    torch.testing.assert_close(nt_xent_loss(n1, n2, 0.2), cosine, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_npair_matches_pml(pml, seed):
    g = torch.Generator().manual_seed(seed)
    a, p = (_randn(g, 6, 4, scale=0.5).requires_grad_() for _ in range(2))
    # pml's NPairsLoss is the multi-class form: one (anchor, positive) pair per label, the other
    # labels' positives as negatives, cross-entropy over anchors @ positives.T, mean over anchors.
    # Ours takes explicit negatives, so pass negatives[b] = positives of the other rows.
    loss = pml.losses.NPairsLoss(distance=pml.dot, reducer=pml.mean)
    want = loss(torch.cat([a, p]), torch.arange(6).repeat(2))
    negatives = torch.stack([p[[j for j in range(6) if j != b]] for b in range(6)])  # [B, B-1, D]
    _assert_same_value_and_grads(npair_loss(a, p, negatives), want, [a, p])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_pml(pml, seed):
    g = torch.Generator().manual_seed(seed)
    a, p, n = (_randn(g, 7, 4).requires_grad_() for _ in range(3))
    # Squared Euclidean without normalisation, explicit triplets (b, B + b, 2B + b), and
    # MeanReducer: a mean over all B triplets (pml's default AvgNonZeroReducer would average
    # over the violating ones only).
    loss = pml.losses.TripletMarginLoss(margin=1.0, distance=pml.sq_euclid, reducer=pml.mean)
    idx = torch.arange(7)
    want = loss(torch.cat([a, p, n]), indices_tuple=(idx, idx + 7, idx + 14))
    got = triplet_loss(a, p, n, 1.0)
    violations = torch.relu((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + 1.0)
    assert 0 < (violations > 0).sum() < 7  # MeanReducer and AvgNonZero would differ here
    _assert_same_value_and_grads(got, want, [a, p, n])


# ---- shape checks ------------------------------------------------------------------------

Z = torch.zeros
NEG = "info_nce_loss: negatives must be [K, D] or [B, K, D] with "
ERRORS = [
    (lambda: contrastive_loss(Z(4), Z(4), 1.0),
     "contrastive_loss: x must be [N, D] with N >= 2, got [4]"),
    (lambda: contrastive_loss(Z(1, 3), Z(1), 1.0),
     "contrastive_loss: x must be [N, D] with N >= 2, got [1, 3]"),
    (lambda: contrastive_loss(Z(4, 3), Z(5), 1.0),
     "contrastive_loss: labels must be [N] with N=4, got [5]"),
    (lambda: triplet_loss(Z(4, 3), Z(4, 3), Z(4, 2), 1.0),
     "triplet_loss: negative must be [B, D] = [4, 3] like anchor, got [4, 2]"),
    (lambda: triplet_loss(Z(4, 3), Z(3, 3), Z(4, 3), 1.0),
     "triplet_loss: positive must be [B, D] = [4, 3] like anchor, got [3, 3]"),
    (lambda: triplet_loss(Z(0, 3), Z(0, 3), Z(0, 3), 1.0),
     "triplet_loss: anchor must be [B, D] with B >= 1, got [0, 3]"),
    (lambda: lifted_structured_loss(Z(4, 3, 1), Z(4), 1.0),
     "lifted_structured_loss: x must be [N, D], got [4, 3, 1]"),
    (lambda: lifted_structured_loss(Z(4, 3), Z(4, 1), 1.0),
     "lifted_structured_loss: labels must be [N] with N=4, got [4, 1]"),
    (lambda: npair_loss(Z(4, 3), Z(4, 3), Z(4, 3)),
     "npair_loss: negatives must be [B, M, D] with B=4, D=3, got [4, 3]"),
    (lambda: npair_loss(Z(4, 3), Z(4, 3), Z(2, 5, 3)),
     "npair_loss: negatives must be [B, M, D] with B=4, D=3, got [2, 5, 3]"),
    (lambda: npair_loss(Z(4, 3), Z(4), Z(4, 5, 3)),
     "npair_loss: positive must be [B, D] = [4, 3], got [4]"),
    (lambda: info_nce_loss(Z(4, 128), Z(4, 128), Z(4, 7), 0.1),
     NEG + "B=4, D=128, or None, got [4, 7]"),
    (lambda: info_nce_loss(Z(4, 8), Z(4, 8), Z(3, 7, 8), 0.1),
     NEG + "B=4, D=8, or None, got [3, 7, 8]"),
    (lambda: info_nce_loss(Z(4, 8), Z(5, 8), None, 0.1),
     "info_nce_loss: positive must be [B, D] = [4, 8], got [5, 8]"),
    (lambda: info_nce_loss(Z(8), Z(8), None, 0.1),
     "info_nce_loss: query must be [B, D] with B >= 1, got [8]"),
    (lambda: info_nce_loss(Z(4, 8), Z(4, 8), None, 0.0),
     "info_nce_loss: temperature must be > 0, got 0.0"),
    (lambda: nt_xent_loss(Z(4, 8), Z(4, 9), 0.1),
     "nt_xent_loss: z2 must be [B, D] = [4, 8] like z1, got [4, 9]"),
    (lambda: nt_xent_loss(Z(4, 8), Z(4, 8), -1.0),
     "nt_xent_loss: temperature must be > 0, got -1.0"),
]


@pytest.mark.parametrize("call,message", ERRORS)
def test_shape_errors_name_argument_and_shapes(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
