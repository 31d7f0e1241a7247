"""Logging: text or JSON lines, levels, the sampled query log, and secret redaction.

Secrets are kept out by construction (nothing logs credentials); redaction is a second line
of defence: any secret known to this process is replaced by *** in every log record, and
`redact()` is applied to every error text that comes from a library before it is kept
(/status, stderr, the snapshot's partial errors). Known secrets are the environment
variables the SDK reads, plus every value found in the credentials files (`learn_credentials`):
the credentials library quotes the offending line of a malformed file in its error, so the
file is read here line by line, tolerating what the library does not (no section header,
a line without a key, quoted values).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

SECRET_ENV = (
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "ALICLOUD_ACCESS_KEY_SECRET",
    "ALIBABA_CLOUD_SECURITY_TOKEN",
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


MIN_SECRET = 8  # shorter values are not redacted (they would mangle ordinary words)
CREDENTIALS_ENV = "ALIBABA_CLOUD_CREDENTIALS_FILE"
# Keys of a credentials file whose values are not secret and are common words.
NOT_SECRET_KEYS = frozenset(
    {"type", "region_id", "region", "enable", "mode", "current", "profile", "name",
     "sts_region", "language", "output"}
)  # fmt: skip
_learned: set[str] = set()


def _variants(value: str) -> Iterator[str]:
    """A secret as it may appear in an error: raw, unquoted, and escaped by repr()."""
    for v in {value, value.strip().strip("'\"").strip()}:
        if len(v) >= MIN_SECRET:
            yield v
            yield repr(v)[1:-1]


def add_secrets(values: Iterable[str]) -> None:
    for value in values:
        _learned.update(_variants(value))


def secrets_in_text(text: str) -> list[str]:
    """Every value in a credentials file's text, parsed as leniently as possible.

    INI (`key = value`, `key: value`), a line with no key at all (kept whole), or JSON (the
    aliyun CLI's config.json: every string value). Section headers and comments are skipped,
    as are the values of a few keys that are not secret (type, region, ...).
    """
    found: list[str] = []
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if doc is not None:
        stack = [doc]
        while stack and len(found) < 10000:
            item = stack.pop()
            if isinstance(item, dict):
                for key, value in item.items():
                    if isinstance(value, str) and str(key).lower() not in NOT_SECRET_KEYS:
                        found.append(value)
                    elif isinstance(value, dict | list):
                        stack.append(value)
            elif isinstance(item, list):
                stack.extend(item)
        return found
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or (line[0] == "[" and line[-1] == "]"):
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if cut > 0:
            key, value = line[:cut].strip().lower(), line[cut + 1 :].strip()
            if key not in NOT_SECRET_KEYS:
                found.append(value)
        found.append(line)  # the whole line, as a parser error would quote it
    return found


def credential_files(configured: str = "") -> list[str]:
    """The credentials files this process may read: configured, environment, defaults."""
    home = Path.home()
    paths = [
        configured,
        os.environ.get(CREDENTIALS_ENV, ""),
        str(home / ".alibabacloud" / "credentials"),
        str(home / ".alibabacloud" / "credentials.ini"),
        str(home / ".aliyun" / "config.json"),
    ]
    return [p for p in dict.fromkeys(paths) if p]


def learn_credentials(configured: str = "") -> None:
    """Read the credentials files and remember their values as secrets (never fails)."""
    for path in credential_files(configured):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except (OSError, ValueError):
            continue
        add_secrets(secrets_in_text(text[:1_000_000]))


def current_secrets() -> list[str]:
    """Longest first, so a secret containing another is replaced whole."""
    values = set(_learned)
    for value in known_secrets():
        values.update(_variants(value))
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every known secret replaced by ***."""
    for secret in current_secrets():
        if secret in text:
            text = text.replace(secret, "***")
    return text


class Redact(logging.Filter):
    """Replace known secret values in the final message (args included) with ***.

    `secrets` are fixed extra values; those learned later (`learn_credentials`) and the
    environment's are looked up at each record, so a secret found after setup still counts.
    """

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.extra = [v for s in secrets or [] for v in _variants(s)]

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = sorted({*self.extra, *current_secrets()}, key=len, reverse=True)
        if not secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        text = record.exc_text or ""
        for secret in secrets:
            message = message.replace(secret, "***")
            text = text.replace(secret, "***")
        record.msg, record.args, record.exc_text = message, None, text or None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_text:  # already formatted (and redacted) by the Redact filter
            doc["exception"] = record.exc_text
        elif record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def known_secrets() -> list[str]:
    return [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]


def setup(level: str = "info", fmt: str = "text", stream: object = None) -> None:
    """(Re)configure the root logger; safe to call again on reload."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Redact())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
