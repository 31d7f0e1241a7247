"""Config warnings: values that parse but cannot be what you meant, for `pldns check`.

The shipped example configs carry placeholders (`vpc-EDIT-ME`) and documentation addresses
(192.0.2.53 as an upstream) that must be replaced before use. They are valid syntax, so they
are not errors; `pldns check` prints a `warning:` line for each (exit 0), `pldns check --strict`
makes them errors (exit 2), and `pldns serve` logs them once at start.

Documentation ranges: RFC 5737 (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and RFC 3849
(2001:db8::/32). Placeholder words: EDIT-ME, CHANGE-ME, REPLACE-ME, <...>, and host names under
the reserved .example / example.com / example.net / example.org (RFC 2606).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

DOCUMENTATION_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
_PLACEHOLDER = re.compile(r"(edit|change|replace|fill)[-_ ]?me|<[^<>]+>|\bTODO\b", re.I)
_EXAMPLE_HOST = re.compile(
    r"(^|[/@.\s])[a-z0-9-]+(\.[a-z0-9-]+)*\.(example|example\.(com|net|org))(?=$|[:/\s])", re.I
)
_URL_HOST = re.compile(r"^[a-z][a-z0-9+.-]*://(?:[^@/]*@)?\[?([^\]/:]+)", re.I)


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in the raw YAML, with its dotted path (mapping keys included)."""
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield sub, key
            yield from _walk(item, sub)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def _host(text: str) -> str:
    """The address part of "IP", "IP:PORT", "[IPv6]:PORT", "IP/LEN" or a URL."""
    text = text.strip()
    url = _URL_HOST.match(text)
    if url:
        return url.group(1)
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    text = text.split("/", 1)[0]
    return text.split(":", 1)[0] if text.count(":") == 1 else text


def _documentation_address(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(_host(text))
    except ValueError:
        return None
    for net in DOCUMENTATION_NETS:
        if address in net:
            return f"{net}"
    return None


def config_warnings(raw: Any) -> list[str]:
    """`path: what is wrong: what to do` for each suspicious value of a parsed YAML document."""
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for path, text in _walk(raw, ""):
        if (path, text) in seen:
            continue
        seen.add((path, text))
        net = _documentation_address(text)
        if net:
            rfc = "RFC 3849" if ":" in net else "RFC 5737"
            out.append(
                f"{path}: {text} is a documentation address ({net}, {rfc}) that answers "
                "nothing: replace it with a real one"
            )
        elif _PLACEHOLDER.search(text) or _EXAMPLE_HOST.search(text):
            out.append(f"{path}: {text!r} is a placeholder: replace it with the real value")
    return out
