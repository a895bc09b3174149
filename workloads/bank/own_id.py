"""No image is its own negative: the id bookkeeping shared by LocalBank and the Ray-backed bank.

Every key in the bank carries the data-set id of the image it was computed from (queue: pushed
beside the key, -1 when unknown; instance: the entry's own index). A query with id i excludes
every key with id i: its partial log-sum-exp and its top-k on each shard skip them (so the exact
InfoNCE is exact over the remaining keys, value and gradient), and sampled negatives carry their
ids so that the objective drops the query's own. The id -1 means "unknown" and matches nothing.
"""

import torch

UNKNOWN = -1


def check_ids(ids, n: int, where: str, low: int = UNKNOWN, high: int | None = None) -> torch.Tensor:
    """ids as a long tensor [n] on its device, or ValueError naming `where` and what is valid."""
    ids = torch.as_tensor(ids)
    if ids.shape != (n,) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{where}: ids must be an integer tensor [{n}], "
                         f"got {ids.dtype} {list(ids.shape)}")
    ids = ids.long()
    if n and (int(ids.min()) < low or (high is not None and int(ids.max()) >= high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{where}: ids must lie in {bound}, "
                         f"got values in [{int(ids.min())}, {int(ids.max())}]")
    return ids


def own_mask(query_ids: torch.Tensor | None, key_ids: torch.Tensor) -> torch.Tensor | None:
    """[B, n] bool, True where key j has query b's id (never for the unknown id -1); None
    without query ids. Built on the keys' device."""
    if query_ids is None:
        return None
    q = query_ids.to(key_ids.device)
    return (q[:, None] == key_ids[None, :]) & (key_ids[None, :] != UNKNOWN)


def merge_topk(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int, dim: int) -> torch.Tensor:
    """Merge per-shard top-k (sims [B, k_s], keys [B, k_s, D], excluded keys at -inf) into
    [B, k', D], most similar first. k' = min(k, the fewest eligible keys of any query), so that
    every row holds only eligible keys (without exclusions: min(k, keys held))."""
    sims = torch.cat([p[0] for p in parts], 1)
    keys = torch.cat([p[1] for p in parts], 1)
    eligible = torch.isfinite(sims).sum(1)
    kk = min(k, int(eligible.min())) if sims.shape[0] else 0
    top = sims.topk(kk, dim=1).indices
    return keys.gather(1, top[..., None].expand(-1, -1, dim))
