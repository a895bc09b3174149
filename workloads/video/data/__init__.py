"""Video data: load_video (files, frame folders, s3://, synthetic:), split_by_source, the synthetic
moving-objects generator."""
from workloads.video.data.load import load_video
from workloads.video.data.split import split_by_source
from workloads.video.data.synthetic import moving_objects

__all__ = ["load_video", "moving_objects", "split_by_source"]
