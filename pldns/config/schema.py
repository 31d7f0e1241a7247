"""A strict reader for YAML mappings: every key known, every value checked, paths in errors.

Problems are collected (not raised one by one) so `pldns check` can list them all, each as
`dotted.key[index]: what was wrong and what was expected`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = object()


class ConfigError(Exception):
    """A config that cannot be used; `problems` are 'dotted.key: what was expected' lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Section:
    """One mapping of the config, read key by key; `close()` reports unknown keys."""

    def __init__(self, data: Any, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.add(path or "(top level)", f"expected a mapping, got {describe(data)}")
            data = {}
        self.data: dict[Any, Any] = data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.problems.add(join(self.path, key), "is required")
                return None
            return default
        return value

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def section(self, key: str) -> Section:
        return Section(self.raw(key, {}), join(self.path, key), self.problems)

    def string(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> str:
        self.seen.add(key)
        value = self.data.get(key)
        path = join(self.path, key)
        if value is None:  # absent: the default, unvalidated ("" allowed as "not set")
            if default is _MISSING:
                self.problems.add(path, "is required")
                return ""
            return default
        if value == "" and default == "":
            return ""  # an optional string left empty: "not set"
        if not isinstance(value, str) or not value:
            self.problems.add(path, f"expected a non-empty string, got {describe(value)}")
            return "" if default is _MISSING else default
        if choices and value not in choices:
            self.problems.add(path, f"expected one of {', '.join(choices)}, got {describe(value)}")
            return default if default is not _MISSING else choices[0]
        return value

    def number(
        self, key: str, default: float, low: float, high: float, integer: bool = False
    ) -> Any:
        value = self.raw(key, default)
        path = join(self.path, key)
        kind = "an integer" if integer else "a number"
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            self.problems.add(path, f"expected {kind}, got {describe(value)}")
            return default
        if not low <= value <= high:
            self.problems.add(path, f"expected {kind} from {low:g} to {high:g}, got {value!r}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.problems.add(
                join(self.path, key), f"expected true or false, got {describe(value)}"
            )
            return default
        return value

    def items(self, key: str, default: Any = _MISSING) -> Iterator[tuple[str, Any]]:
        """Iterate (path, item) over a list value; a scalar is a problem, not a 1-list."""
        value = self.raw(key, default)
        path = join(self.path, key)
        if value is None:
            return
        if not isinstance(value, list):
            self.problems.add(path, f"expected a list, got {describe(value)}")
            return
        for index, item in enumerate(value):
            yield join(path, index), item

    def listed(self, key: str, parse: Callable[[str, Any], T | None], default: Any) -> list[T]:
        out: list[T] = []
        for path, item in self.items(key, default):
            parsed = parse(path, item)
            if parsed is not None:
                out.append(parsed)
        return out

    def close(self) -> None:
        for key in self.data:
            if key not in self.seen:
                where = join(self.path, str(key))
                known = ", ".join(sorted(self.seen))
                self.problems.add(where, f"unknown key (known here: {known})")


def parse_ip(problems: Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str):
        problems.add(path, f"expected an IP address, got {describe(value)}")
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        problems.add(path, f"{value!r} is not an IP address")
        return None


def parse_hostport(problems: Problems, path: str, value: Any, default_port: int) -> Any:
    """'1.2.3.4', '1.2.3.4:53', '[::1]:53', '::1' -> (host, port); None on error."""
    if not isinstance(value, str):
        problems.add(path, f"expected 'IP' or 'IP:PORT', got {describe(value)}")
        return None
    host, port_text = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            problems.add(path, f"{value!r} is not '[IPv6]:PORT'")
            return None
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        problems.add(path, f"{host!r} is not an IP address")
        return None
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problems.add(path, f"{port_text!r} is not a port (1-65535)")
            return None
        port = int(port_text)
    return str(addr), port


def parse_network(problems: Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str):
        problems.add(path, f"expected a CIDR such as 10.0.0.0/8, got {describe(value)}")
        return None
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        problems.add(path, f"{value!r} is not an IP network (CIDR)")
        return None
