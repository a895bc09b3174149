"""Video: clip data (decoded once), the synthetic moving-objects generator, the four video pretext
tasks (frame_order, arrow_of_time, tracking, video_colorization), their training epoch and the video
downstream scores (label propagation J, clip kNN). Plain PyTorch (+ PyAV, numpy, pyarrow): no Ray,
MLflow or Optuna.

    video/dataset.py      VideoDataset: clips uint8 [N, T, 3, H, W] and what comes with them
    video/data/           loading (video files via PyAV, frame folders, s3://, synthetic:), split by source, hash
    video/tasks/          the tasks (PretextTask subclasses over clips) and their registry
    video/features.py     spatial feature maps of a backbone (for attention over pixels)
    video/propagation.py  label propagation by feature attention, region similarity J
    video/loop.py         one training epoch of a video task
    video/downstream.py   the video scores every video workload reports
"""
