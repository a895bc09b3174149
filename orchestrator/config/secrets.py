"""Secrets out of the record: redaction for everything sslab writes, and `${NAME}` references.

sslab writes config values into MLflow (params, tags, config artifacts), Optuna user attributes,
log lines and a submitted job's entrypoint. A value may hold a secret in two ways: a password in a
URL (`postgresql://user:PASSWORD@host/db`, `http://user:PASSWORD@mlflow:5000`), or the whole value
of a key named for a credential (`aws_secret_access_key`, `password`, `token`, ...). `redact` masks
both, in text and in nested dicts and lists, as `***` (SQLAlchemy's own mask for passwords).

A secret is given to sslab as a reference, `${NAME}`, to an environment variable: it is expanded
where the config is loaded (`expand_env`), so that only the name travels (a submitted job's
entrypoint, the config file in its working directory) and the value stays in the environment of
the machines that run it. `literal_secrets` finds what is written literally instead, to refuse it.
"""
from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"

# Key names that hold a credential: matched anywhere in the name, any case (AWS_SECRET_ACCESS_KEY,
# x.password, RAY_AUTH_TOKEN, Authorization). `auth` but not `author`, `authority`.
CREDENTIAL = re.compile(r"pass(?:word|wd)|pwd|secret|token|credential|access[_-]?key|api[_-]?key|"
                        r"private[_-]?key|auth(?!or(?!iz))", re.IGNORECASE)
# ... unless the name says the value is where or how a credential is found, not the credential itself
# (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=FILE, AWS_SHARED_CREDENTIALS_FILE=~/.aws/credentials).
NOT_A_VALUE = re.compile(r"[_.\-](?:mode|path|file|dir|type|method|kind|name|env|var|url)$", re.IGNORECASE)

# scheme://[user]:password@host: the password is what lies between the first ':' after the user and the
# last '@' of the authority (no '/' in it), as urllib and SQLAlchemy read a URL.
URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@'\"<>]*:)(?P<password>[^\s/'\"<>]*)"
                          r"(?P<tail>@[^\s/@'\"<>]*)")
# KEY=VALUE and 'key': 'value' / "key": value (a dict's repr, JSON) in free text; the value quoted or bare.
ASSIGNMENT = re.compile(r"(?P<quote>[\"']?)(?P<key>[A-Za-z_][\w.\-]*)(?P=quote)(?P<sep>\s*=\s*|(?<=[\"']):\s*)"
                        r"(?P<value>\$\{\w+\}|\"[^\"]*\"|'[^']*'|[^\s,;&'\"}\])]+)")
# an HTTP Authorization value; a credential has a digit or symbol in it ("Basic authentication" is prose)
BEARER = re.compile(r"\b(?P<kind>Bearer|Basic)\s+(?P<value>(?=[A-Za-z]*[0-9._~+/=\-])[A-Za-z0-9._~+/=\-]{8,})")
REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
ESCAPED = "$${"  # a literal "${" in a value


def is_credential_key(key: str) -> bool:
    """Whether a key (a dotted path, an environment variable's name) names a value that is a credential."""
    key = str(key)
    return bool(CREDENTIAL.search(key)) and not NOT_A_VALUE.search(key)


def _harmless(value: str) -> bool:
    """Values that are not secrets even under a credential's key: empty, a placeholder, a reference, masked."""
    bare = value.strip("\"'")
    return bare in ("", MASK, "...", "null", "None", "none") or bool(REFERENCE.fullmatch(bare))


def redact_text(text: str) -> str:
    """`text` with every URL password and every credential-named KEY=VALUE's value replaced by ***."""
    text = URL_PASSWORD.sub(lambda m: m["head"] + (m["password"] if _harmless(m["password"]) else MASK) + m["tail"], text)

    def assignment(m: re.Match) -> str:
        if not is_credential_key(m["key"]) or _harmless(m["value"]):
            return m[0]
        quote = m["value"][0] if m["value"][0] in "\"'" else ""
        return m[0][: m.start("value") - m.start()] + quote + MASK + quote

    text = ASSIGNMENT.sub(assignment, text)
    return BEARER.sub(lambda m: f"{m['kind']} {MASK}", text)


def redact(value: Any, key: str = "") -> Any:
    """A copy of `value` (a dict, list, string or scalar, nested) with its secrets masked: the values of
    credential-named keys whole, and passwords in URLs and credential assignments inside strings."""
    secret = bool(key) and is_credential_key(key.rpartition(".")[2])
    if isinstance(value, dict):  # under a credential's key (credentials: {user, key}), every value is one
        return {k: redact(v, key if secret else f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, key) for item in value)
    if secret and value is not None and not _harmless(str(value)):
        return MASK
    return redact_text(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- ${NAME} references


class UnsetVariable(KeyError):
    """A ${NAME} reference to a variable that is not set: the loader names the key that holds it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def expand_text(text: str, environ: dict | None = None) -> str:
    """`text` with each ${NAME} replaced by the environment variable's value ($${ stays a literal ${)."""
    environ = os.environ if environ is None else environ
    parts = text.split(ESCAPED)

    def value(m: re.Match) -> str:
        if m["name"] not in environ:
            raise UnsetVariable(m["name"])
        return environ[m["name"]]

    return "${".join(REFERENCE.sub(value, part) for part in parts)


def expand_env(tree: Any, environ: dict | None = None, key: str = "") -> Any:
    """A copy of a raw config (nested dicts, lists, strings) with ${NAME} references expanded.
    Raises UnsetVariable with `.key` set to the dotted key that holds the reference."""
    if isinstance(tree, dict):
        return {k: expand_env(v, environ, f"{key}.{k}" if key else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [expand_env(item, environ, f"{key}.{i}") for i, item in enumerate(tree)]
    if isinstance(tree, str) and "${" in tree:
        try:
            return expand_text(tree, environ)
        except UnsetVariable as error:
            error.key = key
            raise
    return tree


# --------------------------------------------------------------------------- finding literal secrets


def env_name(key: str) -> str:
    """A variable name to suggest for a key: search.storage -> SSLAB_SEARCH_STORAGE."""
    return "SSLAB_" + re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_").upper()


def _literal(text: str) -> bool:
    """Whether a string holds a URL with a literal password (not a ${NAME} reference, not masked)."""
    return any(not _harmless(m["password"]) for m in URL_PASSWORD.finditer(text))


def literal_secrets(tree: Any, key: str = "") -> list[str]:
    """The dotted keys of a raw config (or any nested dict/list) whose values hold a secret written out:
    a URL with a password, or a credential-named key's value; ${NAME} references are not secrets."""
    if isinstance(tree, dict):
        return [found for k, v in tree.items() for found in literal_secrets(v, f"{key}.{k}" if key else str(k))]
    if isinstance(tree, list):
        return [found for i, item in enumerate(tree) for found in literal_secrets(item, f"{key}.{i}")]
    if tree is None or isinstance(tree, bool):
        return []
    if key and is_credential_key(key.rpartition(".")[2]) and not _harmless(str(tree)):
        return [key]
    return [key] if isinstance(tree, str) and _literal(tree) else []


def override_secret(assignment: str) -> str | None:
    """The key of a --set KEY=VALUE whose value holds a secret written out, else None."""
    key, sep, value = assignment.partition("=")
    key = key.strip()
    if not sep:
        return None
    if (is_credential_key(key.rpartition(".")[2]) and not _harmless(value.strip())) or _literal(value):
        return key
    return None


def how_to_pass(key: str) -> str:
    """What to do instead of writing a secret out: a ${NAME} reference, NAME set where the sweep runs."""
    name = env_name(key)
    return (f"pass it as an environment variable reference instead, e.g. --set '{key}=${{{name}}}' (or "
            f"{key}: ${{{name}}} in the config file), and set {name} on the cluster's nodes (e.g. from a "
            f"Kubernetes secret) and where you run sslab")
