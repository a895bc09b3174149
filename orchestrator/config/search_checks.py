"""A search space against one whole config: conditional keys that can be sampled, and every value
the space can take giving a valid config; apply_params sets sampled values on a raw config."""
from __future__ import annotations

import copy
from typing import Any, Mapping

from pydantic import ValidationError

from orchestrator.config.run import RunConfig
from orchestrator.config.search import CONDITIONS, ParamSpec, SearchConfig
from orchestrator.config.search_keys import first_message, problems_message


def _probe_values(spec: ParamSpec, limit: int = 512) -> list:
    values = spec.values()
    if values is None or len(values) > limit:
        return [spec.low, spec.high]
    return values


def check_search(config: Any, search: SearchConfig | None = None) -> None:
    """Check the space against one whole config (an SSLabConfig): raises ValueError naming each key.

    - a conditional parameter whose parent is fixed in the config must be sampled under it
      (e.g. workload.margin searched while workload.loss is nt_xent is an error);
    - every value the space can take (each choice, each int of a range up to 512 values, the
      bounds of a float range), set alone on the config, must give a valid config: this catches
      the cross-field rules (batch_size a multiple of workers, a loss the bank's negatives serve,
      warmup_epochs < epochs, ...). Combinations of several sampled keys are not enumerated.
    SSLabConfig's validator calls it when `search` is set.
    """
    search = search if search is not None else getattr(config, "search", None)
    if search is None:
        return
    raw = config.model_dump(exclude={"search"})
    problems = []
    kind_fields = type(config.workload).model_fields
    for key in search.space:
        if key.startswith("workload.") and key != "workload.kind" and key.split(".", 1)[1] not in kind_fields:
            problems.append(f"search.space.{key}: not a hyperparameter of workload kind {config.workload.kind!r} "
                            f"(its keys: {', '.join(k for k in kind_fields if k != 'kind')})")
    if problems:
        raise ValueError(problems_message(problems))
    for key, (parent, allowed) in CONDITIONS.items():
        if config.workload.kind != "contrastive":  # the conditions are on the contrastive loss
            break
        if key in search.space and parent not in search.space:
            value = get_key(raw, parent)
            if value not in allowed:
                problems.append(f"search.space.{key}: never sampled: it is used only when {parent} is one of "
                                f"{', '.join(allowed)}, and {parent} is {value!r} (fixed); search {parent} too, or drop {key}")
    for key, spec in search.space.items():
        bad = []
        for value in _probe_values(spec):
            try:
                RunConfig.model_validate(apply_params(raw, {key: value}))
            except ValidationError as error:
                bad.append(f"{value!r} would make the config invalid: {first_message(error)}")
        problems += [f"search.space.{key}: {b}" for b in bad[:3]]
        if len(bad) > 3:
            problems.append(f"search.space.{key}: ... and {len(bad) - 3} more invalid values")
    if problems:
        raise ValueError(problems_message(problems))


def get_key(raw: Any, key: str) -> Any:
    """A dotted key's value in a raw dict or a config object; None where absent."""
    node = raw
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            node = getattr(node, part, None)
        if node is None:
            return None
    return node


def apply_params(raw: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
    """A deep copy of a raw config dict with each dotted key of params set (sections created as needed)."""
    result = copy.deepcopy(dict(raw))
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"cannot set {key}: {part} is {child!r}, not a section")
            node = child
        node[leaf] = value
    return result
