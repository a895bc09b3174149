"""The training step with a memory bank, on the in-process LocalBank (no Ray)."""
import pytest
import torch

from workloads.augment import SimCLRAugment
from workloads.bank import LocalBank
from workloads.losses import info_nce_loss
from workloads.methods.bank_objective import BankObjective, check_bank_loss
from workloads.methods.momentum_contrast import MomentumKeyEncoder, QueryEncoder
from workloads.models import ProjectionHead, build_backbone
from workloads.training.bank_loop import train_epoch_with_bank


def setup(bank, negatives="exact", loss="info_nce", momentum=0.9):
    torch.manual_seed(0)
    backbone = build_backbone("small_convnet", width=4)
    encoder = QueryEncoder(backbone, ProjectionHead(backbone.feature_dim, 16, 8))
    keys = MomentumKeyEncoder(encoder, momentum)
    objective = BankObjective(bank, negatives, loss, temperature=0.2, margin=0.5, k=4, n=16)
    return encoder, keys, objective, torch.optim.SGD(encoder.parameters(), lr=0.05)


def run_epoch(encoder, keys, objective, optimizer, images, first_step=0):
    augment = SimCLRAugment(16)
    return train_epoch_with_bank(encoder, keys, objective, optimizer, None, images, torch.arange(len(images)), augment,
                                 8, torch.device("cpu"), first_step)


@pytest.mark.parametrize("negatives,loss", [("exact", "info_nce"), ("sampled", "npair"), ("hardest", "triplet"),
                                            ("hardest", "lifted_structured"), ("hardest", "contrastive")])
def test_queue_bank_fills_and_the_loss_is_finite(negatives, loss):
    bank = LocalBank(size=24, dim=8, num_shards=2)
    encoder, keys, objective, optimizer = setup(bank, negatives, loss)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    stats = run_epoch(encoder, keys, objective, optimizer, images)
    assert stats.steps == 4 and torch.isfinite(torch.tensor(stats.loss))
    assert len(bank.keys()) == 24  # the last 24 of the 32 keys pushed


def test_the_query_never_sees_keys_of_its_own_step():
    bank = LocalBank(size=64, dim=8)
    encoder, keys, objective, optimizer = setup(bank)
    seen = []
    real = bank.info_nce

    def spy(query, positive, temperature, step=None, query_ids=None):
        seen.append(len(bank.keys()))
        expected = info_nce_loss(query, positive, bank.keys(), temperature)
        value = real(query, positive, temperature, step=step, query_ids=query_ids)
        assert torch.allclose(value, expected, atol=1e-5)
        return value

    bank.info_nce = spy
    run_epoch(encoder, keys, objective, optimizer, torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8))
    assert seen == [0, 8, 16, 24]


@pytest.mark.parametrize("negatives,loss", [("exact", "info_nce"), ("hardest", "triplet"), ("sampled", "info_nce")])
def test_keys_are_pushed_with_their_image_ids_and_queries_pass_theirs(negatives, loss):
    # a queue that holds more than one epoch: in epoch 2 every query's own image is in the bank
    bank = LocalBank(size=48, dim=8)
    encoder, keys, objective, optimizer = setup(bank, negatives, loss)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    asked = []
    for name in ("info_nce", "hardest"):
        real = getattr(bank, name)

        def spy(*args, real=real, **kwargs):
            asked.append(kwargs["query_ids"].tolist())
            return real(*args, **kwargs)

        setattr(bank, name, spy)
    real_sample = bank.sample

    def sample_spy(n, step=None, with_ids=False):
        assert with_ids  # the objective needs the draws' ids to drop each query's own
        asked.append(None)
        return real_sample(n, step=step, with_ids=with_ids)

    bank.sample = sample_spy
    run_epoch(encoder, keys, objective, optimizer, images)
    run_epoch(encoder, keys, objective, optimizer, images, first_step=2)
    held, ids = bank.keys(with_ids=True)
    assert ids.tolist() == list(range(16)) * 2  # FIFO, each key beside its image's id
    if negatives == "sampled":
        assert asked == [None] * 4
    else:
        assert asked == [list(range(8)), list(range(8, 16))] * 2


def test_instance_bank_updates_the_entries_of_the_batch_ids():
    bank = LocalBank(size=32, dim=8, mode="instance", momentum=0.5)
    before = bank.keys().clone()
    encoder, keys, objective, optimizer = setup(bank)
    run_epoch(encoder, keys, objective, optimizer, torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8))
    changed = (bank.keys() - before).abs().sum(dim=1) > 0
    assert changed[:16].all() and not changed[16:].any()


def test_key_encoder_follows_the_query_encoder_by_ema():
    bank = LocalBank(size=32, dim=8)
    encoder, keys, objective, optimizer = setup(bank, momentum=0.5)
    start = [p.clone() for p in keys.encoder.parameters()]
    run_epoch(encoder, keys, objective, optimizer, torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    for key, query, first in zip(keys.encoder.parameters(), encoder.parameters(), start):
        assert torch.allclose(key, 0.5 * first + 0.5 * query.detach(), atol=1e-6)
        assert not key.requires_grad


def test_incompatible_loss_and_negatives_are_rejected():
    with pytest.raises(ValueError, match="loss 'triplet' cannot use 'exact' bank negatives; valid: info_nce"):
        check_bank_loss("exact", "triplet")
    with pytest.raises(ValueError, match="unknown bank negatives 'all'"):
        check_bank_loss("all", "info_nce")
