"""Video data: load_video (files, frame folders, s3://, synthetic:), split_by_source, the synthetic
moving-objects generator."""
