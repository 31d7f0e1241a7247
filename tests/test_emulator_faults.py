"""Faults, signatures and lifecycle of the OpenAPI emulator, seen through the real SDK:
which exception the SDK raises for each failure, and what it carries (code, status,
request id, retry_after)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from alibabacloud_privatelink20200415 import models as pl
from alibabacloud_privatelink20200415.client import Client as PrivateLinkClient
from alibabacloud_tea_openapi.client import Client as OpenApiClient
from alibabacloud_tea_openapi.exceptions import (
    ClientException,
    ServerException,
    ThrottlingException,
)
from alibabacloud_tea_openapi.utils_models import OpenApiRequest, Params
from darabonba.exceptions import UnretryableException
from darabonba.policy.retry import RetryOptions
from darabonba.runtime import RuntimeOptions

from tests.emulator import TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET, Call, OpenApiEmulator
from tests.emulator.sdk import sdk_config
from tests.emulator.signature import acs3_signature

REGION = "cn-hangzhou"
ECI = f"com.aliyuncs.privatelink.{REGION}.eci"
LIST = pl.ListVpcEndpointsRequest(region_id=REGION)


@pytest.fixture
def emu():
    with OpenApiEmulator(region=REGION) as emulator:
        emulator.add_endpoint("ep-1", ECI, zones=[{"zone_id": "a", "eni_ip": "10.0.0.1"}])
        yield emulator


def pl_client(emu: OpenApiEmulator, **overrides) -> PrivateLinkClient:
    return PrivateLinkClient(sdk_config(emu, **overrides))


def test_bad_secret_and_unknown_key(emu: OpenApiEmulator) -> None:
    req = LIST
    with pytest.raises(ClientException) as info:
        pl_client(emu, access_key_secret="wrong-secret").list_vpc_endpoints(req)
    err = info.value
    assert (err.code, err.status_code) == ("SignatureDoesNotMatch", 400)
    assert err.request_id and set(err.data) >= {
        "RequestId",
        "HostId",
        "Code",
        "Message",
        "Recommend",
    }
    assert TEST_ACCESS_KEY_SECRET not in str(err) and "wrong-secret" not in str(err)
    with pytest.raises(ClientException) as info:
        pl_client(emu, access_key_id="LTAIunknown").list_vpc_endpoints(req)
    assert (info.value.code, info.value.status_code) == ("InvalidAccessKeyId.NotFound", 404)
    assert [c.status for c in emu.calls] == [400, 404]


def test_rpc_v1_signature_is_checked_too(emu: OpenApiEmulator) -> None:
    client = pl_client(emu, signature_algorithm="v2")  # HMAC-SHA1, signature in the query
    assert client.list_vpc_endpoints(LIST).body.total_count == 1
    assert emu.calls[-1].params == {"RegionId": REGION}
    with pytest.raises(ClientException) as info:
        pl_client(emu, signature_algorithm="v2", access_key_secret="nope").list_vpc_endpoints(LIST)
    assert info.value.code == "SignatureDoesNotMatch"


def test_sts_token(emu: OpenApiEmulator) -> None:
    emu.add_credential("STS.testkey", "sts-secret", security_token="tok-1")
    req = LIST
    ok = pl_client(
        emu, access_key_id="STS.testkey", access_key_secret="sts-secret", security_token="tok-1"
    )
    assert ok.list_vpc_endpoints(req).body.total_count == 1
    bad = pl_client(
        emu, access_key_id="STS.testkey", access_key_secret="sts-secret", security_token="x"
    )
    with pytest.raises(ClientException) as info:
        bad.list_vpc_endpoints(req)
    assert info.value.code == "InvalidSecurityToken.Mismatch"


def test_throttle_with_retry_after(emu: OpenApiEmulator) -> None:
    client = pl_client(emu)
    req = LIST
    emu.inject("throttle", retry_after=1500)
    with pytest.raises(ThrottlingException) as info:
        asyncio.run(client.list_vpc_endpoints_async(req))
    err = info.value
    assert (err.code, err.status_code, err.retry_after) == ("Throttling.User", 400, 1500)
    assert err.request_id and err.data["Code"] == "Throttling.User"
    # Without the header the same answer is a plain ClientException.
    emu.inject("throttle", code="Throttling")
    with pytest.raises(ClientException) as info:
        client.list_vpc_endpoints(req)
    assert not isinstance(info.value, ThrottlingException) and info.value.code == "Throttling"
    assert client.list_vpc_endpoints(req).body.total_count == 1  # faults used up
    assert [c.status for c in emu.calls] == [400, 400, 200]


def test_sdk_retry_options_sleep_retry_after_milliseconds(emu: OpenApiEmulator) -> None:
    # Only with Config.retry_options does the SDK retry; it then sleeps retry_after ms.
    retry = RetryOptions(
        {
            "retryable": True,
            "retryCondition": [
                {"maxAttempts": 3, "exception": ["ThrottlingException"], "maxDelay": 5000}
            ],
        }
    )
    client = pl_client(emu, retry_options=retry)
    emu.inject("throttle", count=2, retry_after=150)
    started = time.monotonic()
    assert client.list_vpc_endpoints(LIST).body.total_count == 1
    assert 0.3 <= time.monotonic() - started < 2.0
    assert [c.status for c in emu.calls] == [400, 400, 200]


def test_server_errors(emu: OpenApiEmulator) -> None:
    client = pl_client(emu)
    req = LIST
    emu.inject("5xx")
    emu.inject("5xx", code="InternalError")
    with pytest.raises(ServerException) as info:
        client.list_vpc_endpoints(req)
    assert (info.value.code, info.value.status_code) == ("ServiceUnavailable", 503)
    with pytest.raises(ServerException) as info:
        asyncio.run(client.list_vpc_endpoints_async(req))
    assert (info.value.code, info.value.status_code) == ("InternalError", 500)


def test_permission_error(emu: OpenApiEmulator) -> None:
    emu.inject("auth", action="ListVpcEndpointZones")
    client = pl_client(emu)
    assert client.list_vpc_endpoints(LIST).body.endpoints
    with pytest.raises(ClientException) as info:
        client.list_vpc_endpoint_zones(
            pl.ListVpcEndpointZonesRequest(region_id=REGION, endpoint_id="ep-1")
        )
    assert (info.value.code, info.value.status_code) == ("Forbidden.RAM", 403)
    assert info.value.access_denied_detail["AuthAction"] == "privatelink:ListVpcEndpointZones"


def test_fault_count_and_action_scope(emu: OpenApiEmulator) -> None:
    client = pl_client(emu)
    emu.inject("5xx", count=2, action="ListVpcEndpointZones")
    zreq = pl.ListVpcEndpointZonesRequest(region_id=REGION, endpoint_id="ep-1")
    assert client.list_vpc_endpoints(LIST).body.total_count == 1
    for _ in range(2):
        with pytest.raises(ServerException):
            client.list_vpc_endpoint_zones(zreq)
    assert client.list_vpc_endpoint_zones(zreq).body.zones[0].eni_ip == "10.0.0.1"
    assert emu.calls == [
        Call("ListVpcEndpoints", {"RegionId": REGION}, 200),
        Call("ListVpcEndpointZones", {"EndpointId": "ep-1", "RegionId": REGION}, 503),
        Call("ListVpcEndpointZones", {"EndpointId": "ep-1", "RegionId": REGION}, 503),
        Call("ListVpcEndpointZones", {"EndpointId": "ep-1", "RegionId": REGION}, 200),
    ]


def test_reset_slow_and_timeouts(emu: OpenApiEmulator) -> None:
    client = pl_client(emu, read_timeout=300)  # milliseconds
    req = LIST
    emu.inject("reset", count=2)
    for call in (
        lambda: client.list_vpc_endpoints(req),
        lambda: asyncio.run(client.list_vpc_endpoints_async(req)),
    ):
        with pytest.raises(UnretryableException) as info:  # transport errors: no code, inner cause
            call()
        assert "reset" in str(info.value.inner_exception).lower()
    emu.inject("slow", delay=1.0)
    started = time.monotonic()
    with pytest.raises(UnretryableException):
        client.list_vpc_endpoints(req)
    assert time.monotonic() - started < 0.9
    emu.inject("slow", delay=0.1)
    assert client.list_vpc_endpoints(req).body.total_count == 1
    assert [c.status for c in emu.calls][:2] == [None, None]


def test_stop_start_and_restart_keep_the_port(emu: OpenApiEmulator) -> None:
    client = pl_client(emu)
    req = LIST
    port = emu.port
    assert client.list_vpc_endpoints(req).body.total_count == 1  # leaves a keep-alive connection
    emu.stop()
    with pytest.raises(UnretryableException):
        client.list_vpc_endpoints(req)
    with pytest.raises(UnretryableException):
        asyncio.run(client.list_vpc_endpoints_async(req))
    emu.start()
    assert emu.port == port and client.list_vpc_endpoints(req).body.total_count == 1
    emu.add_endpoint("ep-new", ECI)
    emu.restart(downtime=0.05)
    assert emu.port == port
    assert asyncio.run(client.list_vpc_endpoints_async(req)).body.total_count == 2


def test_unknown_action_and_replayed_nonce(emu: OpenApiEmulator) -> None:
    client = OpenApiClient(sdk_config(emu))
    params = Params(
        action="DescribeNothing",
        version="2020-04-15",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    with pytest.raises(ClientException) as info:
        client.call_api(params, OpenApiRequest(query={"RegionId": REGION}), RuntimeOptions())
    assert (info.value.code, info.value.status_code) == ("InvalidAction.NotFound", 404)

    # A hand-signed request (what curl would send), replayed: the nonce is refused.
    headers = {
        "host": emu.endpoint,
        "x-acs-action": "ListVpcEndpoints",
        "x-acs-version": "2020-04-15",
        "x-acs-date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
    }
    names = sorted(headers)
    sig, _ = acs3_signature(
        TEST_ACCESS_KEY_SECRET,
        "POST",
        "/",
        {"RegionId": REGION},
        {k: [v] for k, v in headers.items()},
        names,
        headers["x-acs-content-sha256"],
    )
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={TEST_ACCESS_KEY_ID},SignedHeaders={';'.join(names)},Signature={sig}"
    )
    answers = []
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
        conn.request("POST", f"/?RegionId={REGION}", body=b"", headers=headers)
        resp = conn.getresponse()
        answers.append((resp.status, json.loads(resp.read()), resp.getheader("x-acs-request-id")))
        conn.close()
    assert answers[0][0] == 200 and answers[0][1]["RequestId"] == answers[0][2]
    assert (answers[1][0], answers[1][1]["Code"]) == (400, "SignatureNonceUsed")
