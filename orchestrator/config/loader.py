"""Read a YAML config, apply --set overrides, validate, and name key path + file position on error."""
import difflib
import os
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.config.schema import SSLabConfig
from orchestrator.config.secrets import UnsetVariable, expand_env, redact, redact_text
from orchestrator.config.workload import KINDS, WORKLOADS


class ConfigError(ValueError):
    """A config problem, located: file:line:col, the key path, and what would be valid."""


def _positions(node: yaml.Node, path: tuple = ()) -> dict[tuple, tuple[int, int]]:
    """Map each key path in the YAML document to (line, column), 1-based."""
    found = {path: (node.start_mark.line + 1, node.start_mark.column + 1)}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found[path + (key.value,)] = (key.start_mark.line + 1, key.start_mark.column + 1)
            found.update({k: v for k, v in _positions(value, path + (key.value,)).items() if k != path + (key.value,)})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.update(_positions(item, path + (index,)))
    return found


def apply_override(raw: dict, assignment: str) -> None:
    """`train.epochs=5` sets raw['train']['epochs'] = 5; the value is parsed as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. --set train.epochs=5")
    *parents, leaf = key.strip().split(".")
    target = raw
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {assignment!r}: '{part}' is not a section")
    try:
        target[leaf] = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({getattr(error, 'problem', error)}); "
                          "quote strings, write lists as [a, b]") from None


def read_yaml(path: str, what: str = "config") -> tuple[dict, dict[tuple, tuple[int, int]]]:
    """A YAML file's top-level mapping and the (line, column) of each key path in it."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: {what} file not found")
    with open(path) as handle:
        text = handle.read()
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        what_went_wrong = " ".join(filter(None, (getattr(error, "context", None), getattr(error, "problem", None))))
        raise ConfigError(f"{where}: not valid YAML: {what_went_wrong or error}") from None
    if node is None:
        raise ConfigError(f"{path}: the {what} file is empty (or only comments); expected a mapping of sections "
                          "(name, data, train, ...)")
    duplicate = _duplicate_key(node)
    if duplicate:
        raise ConfigError(f"{path}:{duplicate[1]}: {duplicate[0]}: the key appears twice in its mapping; keep one")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (name, data, train, ...)")
    return raw, (_positions(node) if node is not None else {})


def _duplicate_key(node: yaml.Node, path: str = "") -> tuple[str, str] | None:
    """The first key given twice in one mapping (YAML would keep the last silently): (key path, line:col)."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            name = f"{path}.{key.value}" if path else str(key.value)
            if key.value in seen:
                return name, f"{key.start_mark.line + 1}:{key.start_mark.column + 1}"
            seen.add(key.value)
            found = _duplicate_key(value, name)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        return next(filter(None, (_duplicate_key(item, f"{path}.{i}") for i, item in enumerate(node.value))), None)
    return None


def load_config(path: str, overrides: list[str] = ()) -> SSLabConfig:
    raw, positions = read_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    raw = expand_references(path, raw, positions, overrides)
    try:
        config = SSLabConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_errors(path, error, positions, overrides)) from None
    check_files(path, config)
    return config


def expand_references(path: str, raw: dict, positions: dict, overrides: list[str] = ()) -> dict:
    """The raw config with its ${NAME} references replaced by the environment's values (secrets travel
    by name, see orchestrator.config.secrets); an unset variable is an error naming the key and the variable."""
    try:
        return expand_env(raw)
    except UnsetVariable as error:
        loc = tuple(int(p) if p.isdigit() else p for p in error.key.split("."))
        where = next((positions[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in positions), None)
        place = "--set" if _overridden(error.key, overrides) else f"{path}:{where[0]}:{where[1]}" if where else path
        raise ConfigError(f"{place}: {error.key}: ${{{error.name}}} names the environment variable {error.name}, which "
                          f"is not set: set it where this config is loaded (for a submitted sweep also on the "
                          f"cluster's nodes), or write $${{...}} for a literal ${{") from None


def format_errors(path: str, error: ValidationError, positions: dict, overrides: list[str], schema: Any = SSLabConfig) -> str:
    """One line per error: file:line:col (or --set), the key path, the message; schema: the validated model."""
    lines = [f"{path}: {error.error_count()} config error(s)"]
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        kind = loc[1] if loc[:1] == ("workload",) and len(loc) > 1 and loc[1] in KINDS else None
        if kind:  # the union's tag is not a key of the file
            loc = loc[:1] + loc[2:]
        key = ".".join(str(p) for p in loc) or "(top level)"
        where = next((positions[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in positions), None)
        place = f"{path}:{where[0]}:{where[1]}" if where and not _overridden(key, overrides) else "--set" if _overridden(key, overrides) else path
        got = f" (got {redact(item['input'], key)!r})" if item["type"] not in ("missing", "extra_forbidden") else ""
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; valid keys here: " + ", ".join(_valid_keys(loc[:-1], kind, schema))
            if kind:
                message = f"unknown key for workload kind {kind!r}; valid keys: " + ", ".join(_valid_keys(loc[:-1], kind))
            close = difflib.get_close_matches(str(loc[-1]), _valid_keys(loc[:-1], kind, schema), n=1, cutoff=0.6)
            if close:
                message = message.replace("unknown key", f"unknown key (did you mean {close[0]!r}?)", 1)
        lines.append(f"  {place}: {key}: {message}{got}")
    return redact_text("\n".join(lines))  # a validator's message may quote the value: never its password


def _overridden(key: str, overrides: list[str]) -> bool:
    """The key was set by an override, or lies inside or above one (--set trian.epochs=3 is the key trian)."""
    return any(k == key or k.startswith(key + ".") or key.startswith(k + ".")
               for k in (o.partition("=")[0].strip() for o in overrides))


def _valid_keys(loc: tuple, kind: str | None = None, schema: Any = SSLabConfig) -> list[str]:
    model: Any = schema
    for part in loc:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        # the workload block is a union: its keys are those of its kind
        model = WORKLOADS[kind or "contrastive"] if model is SSLabConfig and part == "workload" else field.annotation
        model = next((a for a in getattr(model, "__args__", ()) if hasattr(a, "model_fields")), model)  # X | None
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def check_files(path: str, config: SSLabConfig) -> None:
    """Local data must exist now, not after the cluster has started."""
    uri = config.data.uri.partition("#")[0]
    if uri.startswith("synthetic:"):
        from orchestrator.config.local_paths import absolute_synthetic

        uri = absolute_synthetic(uri).partition("sprites=")[2].partition("&")[0]  # the sprites must exist
    elif uri.startswith("package:"):
        from orchestrator.config.local_paths import package_folder

        try:
            uri = package_folder(uri)
        except FileNotFoundError as error:
            raise ConfigError(f"{path}: {error}") from None
    if "://" not in uri and not os.path.exists(uri):
        raise ConfigError(f"{path}: data.uri: no such file or directory: {uri!r} (paths are relative to the working directory)")
    from orchestrator.config.data_check import ConfigProblem, check_data

    try:
        check_data(path, config)  # schemes, columns, labels, splits and batch, from the labels alone
    except ConfigProblem as problem:
        raise ConfigError(str(problem)) from None
