"""The video pretext tasks: PretextTask subclasses whose forward takes clips [B, T, 3, H, W]."""
