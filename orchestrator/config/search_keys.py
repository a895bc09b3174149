"""The config keys a search space may name, and one space entry checked against its target field
(its type and range), read off the run config's schema."""
from __future__ import annotations

import difflib
import functools
import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, TypeAdapter, ValidationError

from orchestrator.config.run import RunConfig
from orchestrator.config.workload import WORKLOADS

NOT_SEARCHABLE = ("name", "search", "tracking", "storage")  # identity and where results go, not hyperparameters


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _kind(annotation: Any) -> str:
    """section | float | int | categorical | other, for a field's annotation."""
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if typing.get_origin(annotation) is Literal or annotation in (bool, str):
        return "categorical"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return "other"


@functools.lru_cache(maxsize=None)
def _searchable_keys() -> tuple:
    return tuple(_walk_keys().items())


def searchable_keys() -> dict[str, str]:
    """Every dotted key a space may name -> its kind (float, int or categorical)."""
    return dict(_searchable_keys())


def _walk_keys() -> dict[str, str]:
    """Every dotted key a space may name -> its kind (float, int or categorical)."""
    found: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = prefix + name
            if path in NOT_SEARCHABLE:
                continue
            kind = _kind(field.annotation)
            if path == "workload":  # a union by kind: the keys of every kind (check_search checks the config's)
                for workload in WORKLOADS.values():
                    walk(workload, "workload.")
            elif kind == "section":
                walk(_strip_optional(field.annotation), path + ".")
            elif kind != "other":
                found[path] = kind

    walk(RunConfig, "")
    return found


def _field(key: str):
    model: Any = RunConfig
    *parents, leaf = key.split(".")
    if parents == ["workload"]:  # the first kind that has it (a key's type is the same in every kind)
        return next((w.model_fields[leaf] for w in WORKLOADS.values() if leaf in w.model_fields), None)
    for part in parents:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = _strip_optional(field.annotation)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    return model.model_fields.get(leaf)


@functools.lru_cache(maxsize=None)
def _adapter(key: str) -> TypeAdapter:
    field = _field(key)
    annotation = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(annotation)


def _unknown_key(key: str) -> str:
    keys = searchable_keys()
    section, _, _ = key.rpartition(".")
    if key.split(".")[0] in NOT_SEARCHABLE:
        return f"unknown key: {key.split('.')[0]} is not searchable (identity and output locations are not hyperparameters)"
    field = _field(key)
    if field is not None:
        kind = _kind(field.annotation)
        if kind == "section":
            under = [k for k in keys if k.startswith(key + ".")]
            return f"is a section, not a value; name one of its keys: {', '.join(under)}"
        return f"is not a number, flag or choice ({field.annotation}) and cannot be searched"
    under = sorted(k for k in keys if section and k.startswith(section + "."))
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    valid = under if under else sorted(keys)
    where = f"under {section}" if under else "in the config"
    return f"unknown key{hint}; valid keys {where}: {', '.join(valid)}"


def check_key(key: str, spec) -> tuple[list[str], list | None]:
    """Problems with one dimension against its target field, and its choices as the field reads them."""
    keys = searchable_keys()
    if key not in keys:
        return [_unknown_key(key)], None
    kind = keys[key]
    if spec.type == "float" and kind != "float":
        return [f"{key} is {'an integer' if kind == 'int' else 'a choice'} field; use "
                f"{'type: int or ' if kind == 'int' else ''}type: categorical"], None
    if spec.type == "int" and kind not in ("int", "float"):
        return [f"{key} is a choice field; use type: categorical"], None
    adapter = _adapter(key)
    problems = []
    if spec.type == "categorical":
        validated = []
        for choice in spec.choices:
            try:
                validated.append(adapter.validate_python(choice))
            except ValidationError as error:
                problems.append(f"choice {choice!r} is not a valid {key}: {first_message(error)}")
        return problems, (validated if not problems else None)
    for bound in ("low", "high"):
        value = getattr(spec, bound)
        try:
            adapter.validate_python(value)
        except ValidationError as error:
            problems.append(f"{bound} ({value}) is not a valid {key}: {first_message(error)}")
    return problems, None


def problems_message(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return "\n    ".join([f"{len(problems)} problems:"] + problems)


def first_message(error: ValidationError) -> str:
    item = error.errors()[0]
    return item["msg"].removeprefix("Value error, ")
