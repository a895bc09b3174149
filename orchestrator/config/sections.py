"""The base of every config section: unknown keys are errors, assignments are validated."""
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _area_range(value: tuple[float, float]) -> tuple[float, float]:
    if not 0.0 < value[0] <= value[1] <= 1.0:
        raise ValueError(f"must satisfy 0 < min <= max <= 1, got {list(value)}")
    return value


# (min, max) share of the image area a random resized crop keeps
CropScale = Annotated[tuple[float, float], AfterValidator(_area_range)]
