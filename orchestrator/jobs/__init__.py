"""Sweeps submitted to a Ray cluster: the Jobs API client, submit, upload, watch, the shared-storage checks.
Imports config and sweep (the coordinator's study key)."""
