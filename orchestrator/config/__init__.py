"""Typed configs (sections, workload kinds, the search block) and the YAML loader with file positions.
Imports pydantic and workloads' torch-free constants; nothing else of orchestrator."""
