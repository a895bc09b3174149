"""Colour pretext tasks: Lab conversion, colorization, split-brain, and the encoders that see L or ab.
Imports the pretext base and models."""
