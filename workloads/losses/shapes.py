"""The shape checks the losses share: clear errors before any math."""
import torch


def paired_rows(loss: str, name: str, rows: torch.Tensor, positive: torch.Tensor) -> tuple[int, int]:
    """(B, D) of `rows` [B, D], B >= 1, with `positive` of the same shape; ValueError naming the loss."""
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"{loss}: {name} must be [B, D] with B >= 1, got {list(rows.shape)}")
    if positive.shape != rows.shape:
        raise ValueError(f"{loss}: positive must be [B, D] = {list(rows.shape)}, got {list(positive.shape)}")
    return rows.shape[0], rows.shape[1]
