"""Decode encoded images (JPEG, PNG, ...) to one uint8 tensor, naming the row that fails."""
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import resize

from workloads.data.errors import DataError


def decode_images(
    encoded: list[bytes], where: str, image_size: int | None = None, row_names: list[str] | None = None
) -> torch.Tensor:
    """Return uint8 [N, 3, S, S]; errors name `where` and the row (or its file, given row_names).

    Images that are not S x S are resized (S = image_size, or the first image's width).
    """
    if not encoded:
        raise DataError(f"{where}: the data set is empty (0 images); at least one image is required")
    decoded = []
    for row, data in enumerate(encoded):
        place = row_names[row] if row_names else f"{where}: row {row}"
        if data is None or len(data) == 0:
            raise DataError(f"{place}: image is empty; expected encoded image bytes (JPEG, PNG, ...)")
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DataError(f"{place}: cannot decode image ({error}); expected JPEG, PNG, GIF or WebP bytes") from None
        decoded.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    size = image_size or decoded[0].shape[-1]
    return torch.stack([img if img.shape[-2:] == (size, size) else resize(img, [size, size], antialias=True) for img in decoded])
