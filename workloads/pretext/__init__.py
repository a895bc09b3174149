"""Image pretext tasks (rotation, exemplar, denoising, context encoder; patches/ and color/ hold the
rest) and their registry. Imports models, data, augment."""
