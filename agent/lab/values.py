"""Helm-style values for the lab's agents: `--set key=value` and `--values FILE`, as
`cilium install --set` and `helm install -f` take them.

Owns the parsing (dotted keys, Helm's scalar typing, `{a,b}` lists, `null` to drop a key), the
deep merge, and which keys the lab itself sets for each node (a user may not override those).
Validation against the agent's schema is agent/config.py's (`parse_config`); the lab runs it on
every node's merged config before anything starts.

API:
    parse_set(text) -> dict               one --set argument (may hold several a=b,c=d pairs)
    load_values(path) -> dict             a --values YAML file (a mapping, or empty)
    merge(base, over) -> dict             a deep copy of base with over merged in (a mapping
                                          merges key by key, anything else replaces; None
                                          deletes the key, and a section left empty by that)
    flatten(values) -> list[(key, value)] dotted keys, sorted, for display
    show_value(v) -> str                  a value as --set writes it
    check_lab_owned(values, source)       ConfigError naming a key the lab sets per node
"""
from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from datapath.errors import ConfigError

from ..config import MAX_YAML_DEPTH, key_text, yaml_problem

# keys the lab writes for every node from its topology and layout; `--routing-mode` and
# `--topology` change what may be changed
LAB_OWNED: dict[str, str] = {
    "nodeName": "the topology names the nodes",
    "devices": "the lab wires eth1 in every node",
    "ipam.podCIDR": "the topology gives each node its pod CIDR",
    "routingMode": "use `lab up --routing-mode`",
    "bpf.root": "the lab mounts its own bpffs",
    "apiSocket": "the lab places each agent's socket",
    "stateDir": "the lab places each agent's state",
    "manifests": "use `lab up --manifests`",
    "kvstore": "the topology decides the kvstore",
    "kvstoreOpt": "the topology decides the kvstore",
    "cluster.name": "the lab's cluster is 'default'",
    "prometheus.port": "`lab status` lists each agent's metrics URL on port 9962",
    "prometheus.enabled": "`lab status` lists each agent's metrics URL",
}

_INT = re.compile(r"^[-+]?\d+$")


def _scalar(text: str) -> Any:
    """Helm's --set typing: true/false, null, integers that fit in int64 (strvals'
    strconv.ParseInt); anything else a string."""
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if _INT.match(text) and len(text) <= 20 and -2**63 <= int(text) < 2**63:
        return int(text)
    return text


def _split(text: str, sep: str) -> list[str]:
    """Split on sep outside {...} and not escaped with a backslash."""
    out, cur, depth, i = [], [], 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _value(text: str) -> Any:
    if text.startswith("{") and text.endswith("}"):
        inner = text[1:-1]
        return [] if not inner else [_scalar(_unescape(v)) for v in _split(inner, ",")]
    return _scalar(_unescape(text))


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_set(text: str) -> dict:
    """`a.b=1,c={x,y}` -> {"a": {"b": 1}, "c": ["x", "y"]}; `a\\.b=1` keeps the dot in the key."""
    out: dict = {}
    for pair in _split(text, ","):
        if "=" not in pair:
            raise ConfigError("--set", pair or "<empty>", "expected key=value")
        key, _, raw = pair.partition("=")
        parts = [_unescape(p) for p in _split(key, ".")]
        if not all(parts):
            raise ConfigError("--set", key or "<empty>", "empty key or key part")
        if len(parts) > MAX_YAML_DEPTH:
            raise ConfigError("--set", key[:200], f"more than {MAX_YAML_DEPTH} key parts")
        node: dict = {}
        leaf = node
        for p in parts[:-1]:
            leaf = leaf.setdefault(p, {})
        leaf[parts[-1]] = _value(raw)
        out = merge(out, node, keep_none=True)
    return out


def load_values(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ConfigError(path, "<file>", "not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(path, "<file>", f"cannot read: {e.strerror}") from None
    problem = yaml_problem(text)
    if problem:
        raise ConfigError(path, "<yaml>", f"{problem[0]}: {problem[1]}")
    try:
        data = yaml.safe_load(text)
    except (ValueError, RecursionError) as e:   # e.g. an invalid date (2001-13-45)
        raise ConfigError(path, "<yaml>", f"cannot read a value: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, "<file>", f"not YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "<top-level>", "expected a mapping of Helm values")
    return data


def merge(base: dict, over: dict, keep_none: bool = False) -> dict:
    """A deep copy of base with over merged in; a None value deletes the key (Helm's null),
    unless keep_none (then it is kept, to delete later)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None and not keep_none:
            out.pop(k, None)
        elif isinstance(v, dict):
            sub = merge(out[k] if isinstance(out.get(k), dict) else {}, v, keep_none)
            if sub or keep_none or not v:
                out[k] = sub
            else:
                out.pop(k, None)        # its last value dropped: no empty section left
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k in sorted(values, key=key_text):
        v = values[k]
        key = f"{prefix}{key_text(k).replace('.', chr(92) + '.')}"
        if isinstance(v, dict) and v:
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def show_value(v) -> str:
    """A value as --set writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "{" + ",".join(show_value(x) for x in v) + "}"
    return "null" if v is None else str(v)


def check_lab_owned(values: dict, source: str) -> None:
    for key, _ in flatten(values):
        plain = key.replace("\\.", ".")
        for owned, why in LAB_OWNED.items():
            if plain == owned or plain.startswith(owned + "."):
                raise ConfigError(source, owned, f"set by the lab for each node ({why})")
