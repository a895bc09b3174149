"""An image-folder tree: ROOT/<class>/<image>, classes in sorted order (torchvision's convention)."""
import hashlib

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from workloads.data.dataset import ImageDataset
from workloads.data.decode import decode_images
from workloads.data.errors import DataError


def load_image_folder(root: str, image_size: int | None = None) -> ImageDataset:
    try:
        classes, class_to_idx = find_classes(root)
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise DataError(f"{root}: not an image folder ({error}); expected ROOT/<class>/<image> with {IMG_EXTENSIONS}") from None
    encoded, digest = [], hashlib.sha256()
    for path, label in samples:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise DataError(f"{path}: unreadable file ({error})") from None
        encoded.append(data)
        digest.update(f"{label}:{len(data)}:".encode())
        digest.update(data)
    images = decode_images(encoded, root, image_size, row_names=[path for path, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return ImageDataset(images, labels, classes, root, digest.hexdigest())


def load_folder_labels(root: str) -> tuple[torch.Tensor, list[str]]:
    """The labels of an image-folder tree from its listing alone (no image read)."""
    try:
        classes, class_to_idx = find_classes(root)
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise DataError(f"{root}: not an image folder ({error}); expected ROOT/<class>/<image> with {IMG_EXTENSIONS}") from None
    return torch.tensor([label for _, label in samples], dtype=torch.int64), classes
