# Type stub of pldns/dns/_mmsg.c (batched UDP I/O, built with the compiled data plane).
from typing import Any

BATCH: int
LABELS: int
KINDS: int
RCODES: int
SLOTS: int
NBOUNDS: int
T_TOUCHED_N: int
T_TOUCHED: int
T_BOUNDS: int
T_BUCKETS: int
T_NANOS: int
T_SERVED: int
T_LOST: int
TALLY_SIZE: int

def recv(fd: int, count: int, /) -> list[tuple[bytes, str, bytes]]: ...
def send(fd: int, datas: list[bytes], addrs: list[bytes], /) -> int: ...
def sendto(fd: int, data: bytes, addr: bytes, /) -> bool: ...
def serve(
    fd: int,
    count: int,
    raw: dict[bytes, tuple[bytes, Any, str, int, int, int]],
    entries: dict[bytes, Any],
    allowed: dict[str, bool],
    prefetch: int,
    now: float,
    tally: Any,
    /,
) -> tuple[int, list[tuple[bytes, str, bytes]]]: ...
