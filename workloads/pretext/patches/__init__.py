"""Patch pretext tasks: the 3x3 patch grid, relative position, jigsaw. Imports the pretext base."""
