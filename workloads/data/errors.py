class DataError(ValueError):
    """Bad input data: names the file (and row, where there is one) and what would be valid."""
