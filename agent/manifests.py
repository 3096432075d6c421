"""Kubernetes manifests: the one place that reads and validates the directory of Pod/Namespace YAML.

`load_manifests(directory)` reads every *.yaml, *.yml and *.json file directly inside the
directory (sorted by name; multi-document; `kind: List` expanded), validates Pods and
Namespaces the way the Kubernetes API server would for the fields we use, and returns an
immutable view of them in a `ManifestSet`. Other kinds are listed in `ignored`, not rejected.
Every problem raises `ManifestError(file, obj, field, reason)`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import NoReturn

import yaml

from datapath.errors import ManifestError

from .config import describe

__all__ = ["ContainerPort", "Container", "Pod", "Namespace", "ManifestSet", "load_manifests"]

_SUFFIXES = (".yaml", ".yml", ".json")
_HANDLED = ("Pod", "Namespace")
_PROTOCOLS = ("TCP", "UDP", "SCTP")

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass(frozen=True)
class ContainerPort:
    containerPort: int
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True)
class Container:
    name: str
    image: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]  # sorted items, so Pod is hashable
    nodeName: str | None
    serviceAccountName: str
    containers: tuple[Container, ...]
    source: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...]
    source: str

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass
class ManifestSet:
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)  # key "ns/name"
    ignored: list[str] = field(default_factory=list)    # "file: Kind ns/name"

    def pods_on(self, node: str) -> list[Pod]:
        return sorted((p for p in self.pods.values() if p.nodeName == node), key=lambda p: p.key)

    def namespace_labels(self, ns: str) -> dict[str, str]:
        n = self.namespaces.get(ns)
        return n.label_dict if n else {}


class _Obj:
    """Error context for one object: the file and how the object is named."""

    def __init__(self, file: str, name: str):
        self.file, self.name = file, name

    def fail(self, path: str, reason: str) -> NoReturn:
        raise ManifestError(self.file, self.name, path, reason)

    def mapping(self, v: object, path: str, required: bool = False) -> dict:
        if v is None and not required:
            return {}
        if not isinstance(v, dict):
            self.fail(path, "required field is missing" if v is None
                      else f"expected a mapping, got {describe(v)}")
        return v

    def strings(self, v: object, path: str) -> tuple[str, ...]:
        if v is None:
            return ()
        if not isinstance(v, list):
            self.fail(path, f"expected a list of strings, got {describe(v)}")
        for i, s in enumerate(v):
            if not isinstance(s, str):
                self.fail(f"{path}[{i}]", f"expected a string, got {describe(s)} (quote it)")
        return tuple(v)

    def dns_name(self, v: object, path: str, label: bool) -> str:
        if label:
            what, rx, limit, chars = "DNS-1123 label", _DNS_LABEL, 63, "'-'"
        else:
            what, rx, limit, chars = "DNS-1123 subdomain", _DNS_SUBDOMAIN, 253, "'-', '.'"
        if v is None:
            self.fail(path, "required field is missing")
        if not isinstance(v, str) or len(v) > limit or not rx.match(v):
            self.fail(path, f"expected a {what} (lowercase letters, digits, {chars}, at most "
                            f"{limit}, starting and ending with a letter or digit), got {describe(v)}")
        return v


def _labels(o: _Obj, v: object) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for k, val in o.mapping(v, "metadata.labels").items():
        path = f"metadata.labels[{k}]"
        if not isinstance(k, str):
            o.fail("metadata.labels", f"label keys must be strings, got {describe(k)}")
        prefix, _, name = k.rpartition("/")
        if "/" in k and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
            o.fail(path, f"label key prefix must be a DNS-1123 subdomain, got {prefix!r}")
        if len(name) > 63 or not _QUALIFIED_NAME.match(name):
            o.fail(path, "label key name must be at most 63 letters, digits, '-', '_' or '.', "
                         f"starting and ending with a letter or digit, got {name!r}")
        if not isinstance(val, str):
            o.fail(path, f"label values must be strings (quote it), got {describe(val)}")
        if val and (len(val) > 63 or not _QUALIFIED_NAME.match(val)):
            o.fail(path, "label value must be empty or at most 63 letters, digits, '-', '_' "
                         f"or '.', starting and ending with a letter or digit, got {val!r}")
        out[k] = val
    return tuple(sorted(out.items()))


def _port(o: _Obj, v: object, path: str) -> ContainerPort:
    p = o.mapping(v, path, required=True)
    num = p.get("containerPort")
    if num is None:
        o.fail(f"{path}.containerPort", "required field is missing")
    if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= 65535:
        o.fail(f"{path}.containerPort", f"expected an integer from 1 to 65535, got {describe(num)}")
    proto = p.get("protocol", "TCP")
    if proto not in _PROTOCOLS or not isinstance(proto, str):
        o.fail(f"{path}.protocol", f"expected one of TCP, UDP, SCTP, got {describe(proto)}")
    name = p.get("name")
    if name is not None and not (
            isinstance(name, str) and len(name) <= 15 and _PORT_NAME.match(name)
            and "--" not in name and re.search(r"[a-z]", name)):
        o.fail(f"{path}.name", "expected an IANA service name (at most 15 lowercase letters, "
                               f"digits and '-', with at least one letter), got {describe(name)}")
    return ContainerPort(containerPort=num, name=name, protocol=proto)


def _container(o: _Obj, v: object, path: str) -> Container:
    c = o.mapping(v, path, required=True)
    name = o.dns_name(c.get("name"), f"{path}.name", label=True)
    image = c.get("image")
    if image is not None and not isinstance(image, str):
        o.fail(f"{path}.image", f"expected a string, got {describe(image)}")
    ports = c.get("ports")
    if ports is not None and not isinstance(ports, list):
        o.fail(f"{path}.ports", f"expected a list, got {describe(ports)}")
    return Container(
        name=name,
        image=image,
        command=o.strings(c.get("command"), f"{path}.command"),
        args=o.strings(c.get("args"), f"{path}.args"),
        ports=tuple(_port(o, p, f"{path}.ports[{i}]") for i, p in enumerate(ports or [])),
    )


def _pod(o: _Obj, doc: dict, ns: str, name: str, file: str) -> Pod:
    labels = _labels(o, doc["metadata"].get("labels"))
    spec = o.mapping(doc.get("spec"), "spec", required=True)
    node = spec.get("nodeName")
    if node is not None:
        o.dns_name(node, "spec.nodeName", label=False)
    sa = o.dns_name(spec.get("serviceAccountName") or "default", "spec.serviceAccountName",
                    label=False)
    cs = spec.get("containers")
    if not isinstance(cs, list) or not cs:
        o.fail("spec.containers", "required field is missing" if cs is None
               else f"expected a non-empty list of containers, got {describe(cs)}")
    containers = tuple(_container(o, c, f"spec.containers[{i}]") for i, c in enumerate(cs))
    seen: set[str] = set()
    for i, c in enumerate(containers):
        if c.name in seen:
            o.fail(f"spec.containers[{i}].name", f"duplicate container name {c.name!r}")
        seen.add(c.name)
    return Pod(namespace=ns, name=name, labels=labels, nodeName=node,
               serviceAccountName=sa, containers=containers, source=file)


class _Loader:
    def __init__(self) -> None:
        self.out = ManifestSet()
        self.seen: dict[tuple[str, str, str], str] = {}  # (kind, ns, name) -> file

    def document(self, doc: object, file: str, where: str) -> None:
        o = _Obj(file, f"<{where}>")
        if not isinstance(doc, dict):
            o.fail("<document>", f"expected a mapping (a Kubernetes object), got {describe(doc)}")
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            o.fail("kind", "required field is missing" if kind is None
                   else f"expected a string, got {describe(kind)}")
        if kind == "List":
            items = doc.get("items") or []
            if not isinstance(items, list):
                o.fail("items", f"expected a list, got {describe(items)}")
            for i, item in enumerate(items):
                self.document(item, file, f"{where} items[{i}]")
            return
        meta = doc.get("metadata")
        if kind not in _HANDLED:
            for h in _HANDLED:  # 'pod' silently ignored would be a trap
                if kind.lower() == h.lower():
                    o.fail("kind", f"unknown kind {kind!r}, did you mean {h!r}?")
            m = meta if isinstance(meta, dict) else {}
            self.out.ignored.append(
                f"{file}: {kind} {m.get('namespace') or 'default'}/{m.get('name', '?')}")
            return

        o.name = f"{kind} ({where})"
        meta = o.mapping(meta, "metadata", required=True)
        raw_name = meta.get("name")
        ns = "default"
        if kind == "Pod":
            raw_ns = meta.get("namespace") or "default"
            if isinstance(raw_name, str) and raw_name and isinstance(raw_ns, str):
                o.name = f"Pod {raw_ns}/{raw_name}"
            ns = o.dns_name(raw_ns, "metadata.namespace", label=True)
            name = o.dns_name(raw_name, "metadata.name", label=False)
        else:
            if isinstance(raw_name, str) and raw_name:
                o.name = f"Namespace {raw_name}"
            # Kubernetes requires namespace names to be labels, not subdomains
            name = o.dns_name(raw_name, "metadata.name", label=True)
            ns = ""
        if doc.get("apiVersion") != "v1":
            v = doc.get("apiVersion")
            o.fail("apiVersion", "required field is missing (expected 'v1')" if v is None
                   else f"expected 'v1' for {kind}, got {describe(v)}")

        ident = (kind, ns, name)
        if ident in self.seen:
            o.fail("metadata.name", f"duplicate {kind}: already defined in {self.seen[ident]}")
        self.seen[ident] = file
        if kind == "Pod":
            pod = _pod(o, doc, ns, name, file)
            self.out.pods[pod.key] = pod
        else:
            self.out.namespaces[name] = Namespace(
                name=name, labels=_labels(o, meta.get("labels")), source=file)

    def file(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise ManifestError(path, "<file>", "<file>", "not UTF-8 text") from None
        except OSError as e:
            raise ManifestError(path, "<file>", "<file>",
                                (e.strerror or str(e)).lower()) from None
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<document>"
            raise ManifestError(path, "<yaml>", where, str(e.problem or e.context)) from None
        except yaml.YAMLError as e:
            raise ManifestError(path, "<yaml>", "<document>", str(e)) from None
        for i, doc in enumerate(docs):
            if doc is not None:  # empty documents ("---\n---") are skipped
                self.document(doc, path, f"document {i + 1}")


def load_manifests(directory: str) -> ManifestSet:
    """Read and validate every manifest file directly inside `directory`."""
    if not os.path.exists(directory):
        raise ManifestError(directory, "<directory>", "<path>", "no such directory")
    if not os.path.isdir(directory):
        raise ManifestError(directory, "<directory>", "<path>", "not a directory")
    loader = _Loader()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(_SUFFIXES) and os.path.isfile(path):
            loader.file(path)
    return loader.out
