"""torch.compile of the learner (its forward with the loss; autograd compiles the backward), falling back to eager.

``nn.Module.compile`` compiles in place, so the state_dict keys, DDP wrapping and checkpoints stay
as they are. Compilation happens at the first call; where it fails there (no C++ compiler, an op
the compiler does not support, an old platform), dynamo's ``suppress_errors`` runs that code
eagerly with a warning instead of failing the run. Where torch.compile itself is missing, the
module is returned as it is.
"""
import warnings

from torch import nn


def compile_or_eager(module: nn.Module) -> nn.Module:
    """The same module, compiled in place where torch.compile is available (a warning where not)."""
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # a compile error at the first call: eager, with a warning
        module.compile()
    except Exception as error:  # noqa: BLE001 - any platform without a working torch.compile
        warnings.warn(f"torch.compile is unavailable here ({type(error).__name__}: {error}); training runs eagerly",
                      stacklevel=2)
    return module

