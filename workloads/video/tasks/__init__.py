"""The video pretext tasks: VideoTask (a PretextTask) subclasses whose forward takes clips [B, T, 3, H, W].

    tasks/base.py                VideoTask: forward(clips, ids), prepare(train), figure(clips), min_frames
    tasks/frame_order.py         Shuffle & Learn (Misra et al. 2016): is the frame triplet in order?
    tasks/arrow_of_time.py       Arrow of time (Wei et al. 2018): is the clip played forward?
    tasks/tracking.py            Tracking (Wang & Gupta 2015), optional cycle loss (Wang, Jabri & Efros 2019)
    tasks/tracker.py             the simple tracker for clips without tracks (motion cue + NCC matching)
    tasks/video_colorization.py  Colour copying (Vondrick et al. 2018)
    tasks/registry.py            VIDEO_TASKS and build_video_task(kind, params, backbone, backbone_kwargs)
"""
