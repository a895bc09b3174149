"""Errors of the science layer, importable without torch (the CLI catches them cheaply)."""


class DataError(ValueError):
    """Bad input data: names the file (and row, where there is one) and what would be valid."""
