"""Endpoint sources: where owned-name addresses come from (the seam the sync loop uses).

A source's `fetch()` returns addresses per service, or None when nothing changed (the file
source between edits), or raises SourceError with a bounded `reason`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pldns.dns.table import Addresses
from pldns.sync.snapshot import SnapshotError, read

# Reasons a round fails: these are metric label values, so the set is closed.
REASONS = ("throttled", "auth", "timeout", "network", "server", "client", "invalid")


class SourceError(Exception):
    def __init__(
        self,
        reason: str,
        message: str,
        request_id: str = "",
        retry_after: float | None = None,
        code: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason if reason in REASONS else "client"
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        # What identifies the error for "said once until it changes": the API's error code
        # (InvalidAccessKeyId.NotFound, ...), never the text (it holds a request id).
        self.code = code
        # What to do about it, said last (the user-facing sentence ends with it).
        self.hint = hint

    @property
    def key(self) -> tuple[str, str]:
        """Two errors with the same key are the same problem (logged once)."""
        return (self.reason, self.code or self.message)

    def __str__(self) -> str:
        rid = f" (request id {self.request_id})" if self.request_id else ""
        hint = f": {self.hint}" if self.hint else ""
        return f"{self.reason}: {self.message}{rid}{hint}"


@dataclass(frozen=True)
class SourceResult:
    addresses: Mapping[str, Addresses]
    # Services whose data is partial (say one endpoint's zones failed): keep their old IPs.
    incomplete: frozenset[str] = frozenset()
    errors: Mapping[str, str] = field(default_factory=dict)
    generated_at: float | None = None  # when the data was made, if the source knows


class EndpointSource(Protocol):
    kind: str

    async def fetch(self) -> SourceResult | None: ...


class FileSource:
    """Follows a snapshot file written by someone else (a ConfigMap mount, a shared file).

    Changes are seen by polling stat() of the path (following symlinks, so the kubelet's
    `..data` symlink swap is a new inode). An invalid new file raises and the previous table
    stays; the same bad file is not re-read until it changes again.
    """

    kind = "file"

    def __init__(self, path: str, region: str = "") -> None:
        self.path = path
        self.region = region  # a snapshot for another region is refused ("" = any)
        self._seen: tuple[int, int, int] | None = None
        self._bad: SourceError | None = None  # the error of the file as last read

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def fetch(self) -> SourceResult | None:
        sig = self._signature()
        if sig is None:
            self._seen = None
            raise SourceError(
                "invalid", f"{self.path} does not exist or cannot be read", code="missing"
            )
        if sig == self._seen:
            if self._bad is not None:
                raise self._bad  # still the same bad file: still failing, not re-read
            return None
        self._seen = sig
        try:
            snap = read(self.path, origin="file")
        except SnapshotError as err:
            self._bad = SourceError("invalid", f"{self.path}: {err}", code="snapshot")
            raise self._bad from err
        if self.region and snap.region != self.region:
            self._bad = SourceError(
                "invalid",
                f"{self.path}: the snapshot is for region {snap.region!r}, "
                f"this config is for {self.region!r}; not used",
                code="region",
            )
            raise self._bad
        self._bad = None
        return SourceResult(snap.services, generated_at=snap.generated_at)
