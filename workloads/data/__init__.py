"""Image data: Parquet (local or S3), image folders, CIFAR-10; decoded once into memory."""
from .dataset import ImageDataset
from .errors import DataError
from .load import load_images, load_labels
from .normalization import CIFAR10, Normalization, active_normalization, using_normalization
from .split import check_class_sizes, split_three_ways, stratified_split

__all__ = ["CIFAR10", "DataError", "ImageDataset", "Normalization", "active_normalization", "check_class_sizes",
           "load_images", "load_labels", "split_three_ways", "stratified_split", "using_normalization"]
