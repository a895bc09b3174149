"""The training loops (in-batch contrastive, with a memory bank, pretext), one epoch each, and the
per-worker shard of an epoch. Imports methods and pretext."""
