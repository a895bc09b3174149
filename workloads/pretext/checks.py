"""Hyperparameter checks of the pretext tasks: a ValueError that names the parameter and what is valid."""


def check_range(name: str, value, low: float, high: float, *, integer: bool = False,
                open_low: bool = False, open_high: bool = False):
    """Validate a hyperparameter: a number (an integer if asked) between low and high, ends included
    unless open; a ValueError naming it and the valid range otherwise. Returns the value."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or isinstance(value, int))
    if not ok or not (low < value if open_low else low <= value) or not (value < high if open_high else value <= high):
        kind = "an integer" if integer else "a number"
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be {kind} in {interval}, got {value!r}")
    return value


def check_choice(name: str, value, choices):
    """Validate a hyperparameter that is one of a few named choices. Returns the value."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(str(c) for c in choices)}, got {value!r}")
    return value
