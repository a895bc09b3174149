"""Errors of the science layer, importable without torch (the CLI catches them cheaply)."""


class DataError(ValueError):
    """Bad input data: names the file (and row, where there is one) and what would be valid."""


class NonFiniteLossError(FloatingPointError):
    """The training loss, or the gradient norm, became nan or inf: a failed run, not bad input.

    The message reads "loss became nan at epoch E step S (lr L, last finite loss X)" (or "gradient norm
    became inf ..."); epoch and step are 0-based, epoch as the step of MLflow's train/loss, step within
    the epoch. `run_id` is set by whoever records the failed run (orchestrator.training.run).
    """

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None):
        super().__init__(message)  # args: (message,), so that it pickles across processes with its state
        self.epoch, self.step, self.run_id = epoch, step, None
