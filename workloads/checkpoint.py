"""The encoder checkpoint: everything needed to rebuild and evaluate the backbone without its config.

Besides the weights and how to build them, it keeps what the encoder's input must look like: the
per-channel `normalization` ({"mean": [...], "std": [...]}) measured on the run's training split,
and the `augment` settings the run trained with (for repr/* in `sslab eval`).
"""
import os
import pickle
import tempfile
from typing import Any

import torch
from torch import nn

from workloads.data.normalization import CIFAR10, Normalization
from workloads.errors import DataError
from workloads.pretext.registry import build_encoder

FORMAT = "sslab.encoder/1"


class UnsafeCheckpointError(DataError):
    """A checkpoint that asks to run code (or is not a torch checkpoint at all): refused, nothing run."""


def load_plain(path: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True: tensors, numbers, strings and plain containers only.

    sslab writes nothing else, so a file that needs more (a pickled object, a __reduce__ that calls
    os.system) was not written by sslab: it is refused before any of its code runs."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # torch's restricted unpickler refused a global or an opcode
        refused = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        if refused and "GLOBAL" in refused[0]:
            raise UnsafeCheckpointError(
                f"{path}: not a plain tensor checkpoint: it asks to load Python objects ({refused[0]}), which sslab "
                f"never writes. Refused without running any of it (weights_only loading); replace it with a "
                f"checkpoint sslab wrote, and check who can write there") from None
        raise UnsafeCheckpointError(f"{path}: not a plain tensor checkpoint (torch's weights-only reader refused it"
                                    f"{': ' + refused[0] if refused else ''}); it is damaged or was not written by sslab. "
                                    f"Nothing in it was run") from None
    except Exception as error:  # garbage trips torch's reader anywhere (IndexError, KeyError, RuntimeError, ...)
        raise UnsafeCheckpointError(f"{path}: not a readable torch checkpoint (truncated, or not written by "
                                    f"torch.save: {type(error).__name__}: {str(error).splitlines()[0][:200]})") from None


def save_encoder(path: str, backbone: nn.Module, name: str, kwargs: dict, metadata: dict[str, Any]) -> None:
    """Written to a temporary file then renamed, so a crash never leaves a half-written checkpoint."""
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    payload = {"format": FORMAT, "backbone": name, "backbone_kwargs": kwargs, "state_dict": state, **metadata}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False) as handle:
        torch.save(payload, handle)
    os.replace(handle.name, path)


def load_encoder(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found; expected an encoder.pt written by sslab train")
    payload = load_plain(path, map_location=device)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path}: not an sslab encoder checkpoint (expected format {FORMAT!r})")
    # a pretext task's encoder may wrap the backbone (lightness in, or split-brain halves)
    backbone = build_encoder(payload["backbone"], payload["backbone_kwargs"], payload.get("encoder_wrapper"))
    backbone.load_state_dict(payload["state_dict"])
    metadata = {k: v for k, v in payload.items() if k not in ("state_dict",)}
    return backbone.to(device).eval(), metadata


def checkpoint_normalization(metadata: dict[str, Any]) -> Normalization:
    """The normalisation an encoder was trained with: the one its checkpoint stores, or the CIFAR-10
    constants for checkpoints written before runs measured it (every data set was normalised so then)."""
    stored = metadata.get("normalization")
    return Normalization.from_dict(stored) if stored else CIFAR10
