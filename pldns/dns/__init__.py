"""The data plane: bytes in, bytes out. Imports nothing from sync, config, yaml or the cloud SDK.

`COMPILED` names the modules an optional build compiles to C with mypyc (setup.py reads this
tuple; `PLDNS_COMPILE=1`, see the README's "Compiled data plane"), and `EXTENSIONS` the C
sources it builds beside them. The Python source stays the reference: the same modules run
interpreted from an ordinary install (and the listener reads UDP through the event loop's
transport instead of `_mmsg`), and `compiled()` says which of them a running process loaded
as extension modules.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES

# The hot path and what it calls per query. Left out, being read rather than run per query:
# `rcode` (exception classes: a compiled subclass would not see its class-level RCODE),
# `settings` (frozen dataclasses the config layer builds and replaces), `table` (frozen
# dataclasses pickled to the workers, which compiled classes would not unpickle) and `tally`
# (a Counter subclass: mypyc compiles classes that derive from object).
COMPILED = (
    "acl", "answer", "attempt", "backoff", "cache", "cacheflow", "cname", "connection",
    "forwarder", "health", "hitpath", "leak", "listeners", "pipeline", "querylog", "stats",
    "tcppool", "upstream", "wire",
)  # fmt: skip
# C sources in pldns/dns, built only with COMPILED: `_mmsg`, batched UDP I/O (recvmmsg and
# sendmmsg, which Python's socket module lacks) for pldns.dns.listeners.BatchUdpListener,
# which also answers repeated cache hits (pldns.dns.hitpath).
EXTENSIONS = ("_mmsg",)


def compiled() -> list[str]:
    """The modules of COMPILED and EXTENSIONS loaded from a C extension in this process."""
    found = []
    for name in COMPILED + EXTENSIONS:
        module = sys.modules.get(f"{__name__}.{name}")
        path = getattr(module, "__file__", None) or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def build() -> str:
    """How the data plane runs: 'compiled' (every module of COMPILED and EXTENSIONS), 'python'
    (none), or 'partial' (some: an install mixing two builds, worth a look). Counts the modules
    loaded."""
    count = len(compiled())
    whole = len(COMPILED) + len(EXTENSIONS)
    return "python" if count == 0 else "compiled" if count == whole else "partial"


def load() -> str:
    """Import every module of COMPILED (and of EXTENSIONS the build has) and say how they run
    (`build()`)."""
    import contextlib
    import importlib

    for name in COMPILED:
        importlib.import_module(f"{__name__}.{name}")
    for name in EXTENSIONS:
        with contextlib.suppress(ImportError):  # a pure build: the listener uses the transport
            importlib.import_module(f"{__name__}.{name}")
    return build()
