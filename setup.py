"""Build hook for one option: PLDNS_COMPILE=1 compiles the data plane with mypyc.

Everything else about the package is in pyproject.toml. Without PLDNS_COMPILE (the default,
and every editable install) pldns is pure Python. With it, the modules named in
pldns.dns.COMPILED become C extensions next to their sources (which stay in the wheel), and
the C sources named in pldns.dns.EXTENSIONS (batched UDP I/O) are built beside them: this
needs mypy (which ships mypyc) and a C compiler with the Python headers at build time, e.g.

    pip install mypy && PLDNS_COMPILE=1 pip install --no-build-isolation .

(scripts/venv.sh --compiled does that). See the README, "Compiled data plane".
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from setuptools import Extension, setup


def names(tuple_name: str) -> list[str]:
    """A tuple of module names in pldns/dns/__init__.py, read without importing pldns (its
    dependencies may be absent)."""
    tree = ast.parse(Path("pldns/dns/__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == tuple_name:
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"setup.py: pldns/dns/__init__.py has no {tuple_name} tuple")


def compiled_modules() -> list[str]:
    return [f"pldns/dns/{name}.py" for name in names("COMPILED")]


def c_extensions() -> list[Extension]:
    return [
        Extension(f"pldns.dns.{name}", [f"pldns/dns/{name}.c"], extra_compile_args=["-O2"])
        for name in names("EXTENSIONS")
    ]


def ext_modules() -> list[object]:
    if os.environ.get("PLDNS_COMPILE", "").lower() not in ("1", "true", "yes"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as err:
        raise SystemExit(
            "setup.py: PLDNS_COMPILE=1 needs mypy (pip install mypy) in the build environment"
            " (use pip install --no-build-isolation)"
        ) from err
    return [*mypycify(compiled_modules(), opt_level="3", debug_level="0"), *c_extensions()]


setup(ext_modules=ext_modules())
