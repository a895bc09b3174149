"""Image data: Parquet (local or S3), image folders, CIFAR-10; decoded once into memory."""
from .dataset import ImageDataset
from .errors import DataError
from .load import load_images
from .split import stratified_split

__all__ = ["DataError", "ImageDataset", "load_images", "stratified_split"]
