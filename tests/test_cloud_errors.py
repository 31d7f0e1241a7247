"""Cloud errors a user reads: one line, never cut mid-word, ending with what to do; and the
choice of asking the ECS metadata service only on Alibaba Cloud."""

from __future__ import annotations

from pathlib import Path

import pytest

from pldns.sync.cloudenv import DISABLED_ENV, ROLE_ENV, metadata_allowed, on_alibaba_cloud
from pldns.sync.privatelink import classify, one_line


def _dmi(tmp_path: Path, vendor: str, product: str = "") -> Path:
    (tmp_path / "sys_vendor").write_text(vendor + "\n")
    if product:
        (tmp_path / "product_name").write_text(product + "\n")
    return tmp_path


def test_metadata_is_off_outside_alibaba_cloud(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    allowed, why = metadata_allowed(env, _dmi(tmp_path, "QEMU", "Standard PC (Q35 + ICH9, 2009)"))
    assert not allowed and why == "not an Alibaba Cloud instance"
    assert env == {DISABLED_ENV: "true"}  # what the SDK's chain reads


def test_metadata_is_on_on_an_ecs_instance(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert on_alibaba_cloud(_dmi(tmp_path, "Alibaba Cloud", "Alibaba Cloud ECS"))
    assert metadata_allowed(env, tmp_path) == (True, "this is an Alibaba Cloud instance")
    assert env == {}


def test_no_dmi_at_all_means_not_alibaba_cloud(tmp_path: Path) -> None:
    assert not on_alibaba_cloud(tmp_path / "missing")


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({DISABLED_ENV: "true"}, False),
        ({DISABLED_ENV: "TRUE"}, False),
        ({DISABLED_ENV: "false"}, True),  # you said so, even off the cloud
        ({ROLE_ENV: "my-ram-role"}, True),
    ],
)
def test_an_explicit_setting_wins(tmp_path: Path, env: dict[str, str], allowed: bool) -> None:
    before = dict(env)
    assert metadata_allowed(env, _dmi(tmp_path, "QEMU"))[0] is allowed
    assert env == before  # left alone


@pytest.mark.parametrize("limit", [10, 40, 80, 240])
def test_one_line_never_cuts_a_word(limit: int) -> None:
    text = "Cannot connect to host\nprivatelink.cn-hangzhou.aliyuncs.com:443  ssl:default " * 9
    out = one_line(text, limit)
    assert "\n" not in out and "  " not in out
    assert len(out) <= limit + 2
    if out.endswith(" …"):
        words = set(text.split())
        assert all(w in words for w in out[:-2].split())  # only whole words
    assert one_line("short  text\n") == "short text"


class _SdkError(Exception):
    def __init__(self, message: str, **attrs: object) -> None:
        super().__init__(message)
        self.__dict__.update(attrs)


@pytest.mark.parametrize(
    ("err", "reason", "ends"),
    [
        (_SdkError("x", code="Forbidden.RAM", status_code=403), "auth", "for discover)"),
        (_SdkError("x", code="InvalidAccessKeyId.NotFound", status_code=404), "auth",
         "(ALIBABA_CLOUD_ACCESS_KEY_ID or the credentials file)"),
        (_SdkError("x", code="SignatureDoesNotMatch", status_code=400), "auth",
         "ALIBABA_CLOUD_ACCESS_KEY_SECRET or the credentials file"),
        (_SdkError("x", code="Throttling.User", status_code=400), "throttled",
         "raise sync.interval if this persists"),
        (_SdkError("x", code="InternalError", status_code=500), "server",
         "contact support with the request id"),
        (_SdkError("x", code="InvalidVpcId.NotFound", status_code=404), "client",
         "privatelink.vpc_id"),
        (TimeoutError("timed out " * 60), "timeout", "privatelink.connect_timeout/read_timeout"),
        (OSError("Cannot connect to host " * 40), "network",
         "privatelink.endpoint and privatelink.https_proxy"),
    ],
)  # fmt: skip
def test_every_api_error_ends_with_what_to_do(err: Exception, reason: str, ends: str) -> None:
    got = classify(err, "privatelink.cn-hangzhou.aliyuncs.com")
    text = str(got)
    assert got.reason == reason
    assert text.endswith(ends), text
    assert "\n" not in text and len(text) < 600
