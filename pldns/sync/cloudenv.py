"""Whether the SDK's credentials chain may ask the ECS metadata service (100.100.100.200).

On an Alibaba Cloud instance (ECS, an ACK node, ECI) the metadata service hands out the RAM
role's credentials. Anywhere else it is not there, and asking it costs a timeout per round,
a screen of SDK tracebacks, and in a data center worse: 100.100.100.200 lies in 100.64.0.0/10,
the very range that clashes with the cloud's, so it may be one of your own hosts.

So pldns lets the chain try it only on Alibaba Cloud (the DMI vendor or product says so), or
when you said so: ALIBABA_CLOUD_ECS_METADATA_DISABLED set either way, or a role name in
ALIBABA_CLOUD_ECS_METADATA. Otherwise it sets ALIBABA_CLOUD_ECS_METADATA_DISABLED=true for
itself before the SDK reads it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

DISABLED_ENV = "ALIBABA_CLOUD_ECS_METADATA_DISABLED"
ROLE_ENV = "ALIBABA_CLOUD_ECS_METADATA"
DMI = Path("/sys/class/dmi/id")
_DMI_FILES = ("sys_vendor", "product_name")


def on_alibaba_cloud(dmi: Path = DMI) -> bool:
    """The firmware says Alibaba Cloud (sys_vendor "Alibaba Cloud", product "Alibaba Cloud ECS")."""
    for name in _DMI_FILES:
        try:
            text = (dmi / name).read_text(errors="replace")
        except OSError:
            continue
        if "alibaba" in text.lower():
            return True
    return False


def metadata_allowed(
    environ: MutableMapping[str, str] | None = None, dmi: Path = DMI
) -> tuple[bool, str]:
    """Decide, and make the SDK follow the decision: (allowed, why)."""
    env = os.environ if environ is None else environ
    if env.get(DISABLED_ENV, "") != "":
        allowed = env[DISABLED_ENV].strip().lower() != "true"
        return allowed, f"{DISABLED_ENV}={env[DISABLED_ENV]}"
    if env.get(ROLE_ENV):
        return True, f"{ROLE_ENV} names a RAM role"
    if on_alibaba_cloud(dmi):
        return True, "this is an Alibaba Cloud instance"
    env[DISABLED_ENV] = "true"
    if environ is None:
        # The credentials package reads its environment once, at import.
        auth_util = sys.modules.get("alibabacloud_credentials.utils.auth_util")
        if auth_util is not None:
            auth_util.environment_ecs_metadata_disabled = "true"  # type: ignore[attr-defined]
    return False, "not an Alibaba Cloud instance"
