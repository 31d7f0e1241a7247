"""Server-side re-computation of Alibaba Cloud OpenAPI request signatures.

Mirrors what ``alibabacloud_tea_openapi.utils.Utils`` does on the client (read from the
installed SDK, version 0.4.x):

ACS3-HMAC-SHA256 (the default: ``Client.do_request``, used when ``Config.signature_algorithm``
is unset; both privatelink 2020-04-15 and pvtz 2018-01-01 go this way)::

    CanonicalRequest = METHOD \\n PATH \\n CanonicalQuery \\n CanonicalHeaders \\n
                       SignedHeaders \\n hex(sha256(body))
    CanonicalQuery   = sorted keys (not encoded) "k=quote(v, safe='~')" joined by "&"
    CanonicalHeaders = for every request header (lower-cased, sorted):
                       "name:" + ",".join(sorted(stripped values)) + "\\n"
    SignedHeaders    = the same names joined by ";"  (the SDK signs *all* headers it sets:
                       host, accept, user-agent, x-acs-*, content-type when present)
    StringToSign     = "ACS3-HMAC-SHA256\\n" + hex(sha256(CanonicalRequest))
    Signature        = hex(hmac_sha256(secret, StringToSign))
    Authorization: ACS3-HMAC-SHA256 Credential=<AK>,SignedHeaders=<names>,Signature=<hex>

RPC v1 (HMAC-SHA1, ``Config(signature_algorithm="v2")`` -> ``Client.do_rpcrequest``)::

    StringToSign = METHOD + "&%2F&" + quote_plus("&".join(quote(k)=quote(v) for sorted k))
    Signature    = base64(hmac_sha1(secret + "&", StringToSign)), sent as query "Signature"

Stdlib only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

ACS3_ALGORITHM = "ACS3-HMAC-SHA256"
# Query parameters that belong to RPC v1 signing, not to the action itself.
RPC_SIGNING_PARAMS = frozenset(
    {
        "Action",
        "Version",
        "Format",
        "Timestamp",
        "SignatureNonce",
        "SignatureMethod",
        "SignatureVersion",
        "Signature",
        "SignatureType",
        "AccessKeyId",
        "SecurityToken",
        "BearerToken",
    }
)
MAX_CLOCK_SKEW_SECONDS = 15 * 60


class ApiError(Exception):
    """An OpenAPI error answer: HTTP status, ``Code`` and ``Message`` of the JSON body."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(frozen=True)
class Credential:
    secret: str
    security_token: str | None = None


def canonical_query(query: Mapping[str, str]) -> str:
    """ACS3 canonical query string, exactly as ``get_canonical_query_string``."""
    return "&".join(f"{k}={quote(query[k], safe='~', encoding='utf-8')}" for k in sorted(query))


def canonical_headers(headers: Mapping[str, list[str]], names: list[str]) -> str:
    out = []
    for name in names:
        values = headers.get(name, [])
        out.append(f"{name}:{','.join(sorted(v.strip() for v in values))}\n")
    return "".join(out)


def acs3_signature(
    secret: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, list[str]],
    signed_names: list[str],
    payload_hash: str,
) -> tuple[str, str]:
    """Return (signature hex, string to sign) for an ACS3-HMAC-SHA256 request."""
    canonical = (
        f"{method}\n{path or '/'}\n{canonical_query(query)}\n"
        f"{canonical_headers(headers, signed_names)}\n{';'.join(signed_names)}\n{payload_hash}"
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    string_to_sign = f"{ACS3_ALGORITHM}\n{digest}"
    sig = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    return sig, string_to_sign


def rpc_signature(secret: str, method: str, params: Mapping[str, str]) -> tuple[str, str]:
    """Return (signature base64, string to sign) for an RPC HMAC-SHA1 request."""
    canon = "&".join(
        f"{quote(k, safe='~')}={quote(params[k], safe='~')}"
        for k in sorted(params)
        if k != "Signature"
    )
    string_to_sign = f"{method}&%2F&{quote_plus(canon, safe='~')}"
    raw = hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(raw).decode(), string_to_sign


def first(headers: Mapping[str, list[str]], name: str) -> str | None:
    """The first value of header ``name`` (lower-case), or None."""
    values = headers.get(name)
    return values[0] if values else None


def _parse_authorization(value: str) -> tuple[str, dict[str, str]]:
    algorithm, _, rest = value.strip().partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key] = val
    return algorithm, fields


def _check_clock(stamp: str | None, now: datetime | None) -> None:
    if not stamp:
        raise ApiError(400, "MissingTimestamp", "Timestamp is mandatory for this action.")
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise ApiError(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        ) from None
    skew = abs(((now or datetime.now(UTC)) - when).total_seconds())
    if skew > MAX_CLOCK_SKEW_SECONDS:
        raise ApiError(
            400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
        )


def _lookup(
    credentials: Callable[[str], Credential | None], key_id: str, token: str | None
) -> Credential:
    cred = credentials(key_id)
    if cred is None:
        raise ApiError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
    if cred.security_token is not None and token != cred.security_token:
        raise ApiError(
            400, "InvalidSecurityToken.Mismatch", "Specified SecurityToken is not valid."
        )
    return cred


def verify_request(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, list[str]],
    body: bytes,
    form: Mapping[str, str],
    credentials: Callable[[str], Credential | None],
    now: datetime | None = None,
) -> str:
    """Check the request's signature; return the AccessKey id or raise :class:`ApiError`.

    ``headers`` maps lower-case names to all received values; ``form`` is the decoded
    ``application/x-www-form-urlencoded`` body (RPC v1 signs it together with the query).
    """
    auth = first(headers, "authorization") or ""
    if not auth and "Signature" in query:
        return _verify_rpc(method, query, form, credentials, now)
    if not auth:
        raise ApiError(
            400,
            "IncompleteSignature",
            "The request signature does not conform to Aliyun standards.",
        )
    algorithm, fields = _parse_authorization(auth)
    if algorithm != ACS3_ALGORITHM:
        raise ApiError(400, "InvalidSignatureMethod", "Specified signature method is not valid.")
    key_id, names, given = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    )
    if not key_id or not names or not given:
        raise ApiError(
            400,
            "IncompleteSignature",
            "The request signature does not conform to Aliyun standards.",
        )
    _check_clock(first(headers, "x-acs-date"), now)
    token = first(headers, "x-acs-security-token")
    cred = _lookup(credentials, key_id, token)
    payload_hash = hashlib.sha256(body).hexdigest()
    claimed = first(headers, "x-acs-content-sha256") or payload_hash
    if claimed != payload_hash:
        raise ApiError(
            400,
            "InvalidParameter.ContentSHA256",
            "The x-acs-content-sha256 header does not match the body.",
        )
    expected, string_to_sign = acs3_signature(
        cred.secret, method, path, query, headers, names.split(";"), payload_hash
    )
    if not hmac.compare_digest(expected, given):
        raise ApiError(
            400,
            "SignatureDoesNotMatch",
            f"Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}",
        )
    return key_id


def _verify_rpc(
    method: str,
    query: Mapping[str, str],
    form: Mapping[str, str],
    credentials: Callable[[str], Credential | None],
    now: datetime | None,
) -> str:
    params = {**query, **form}
    if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
        raise ApiError(400, "InvalidSignatureMethod", "Specified signature method is not valid.")
    _check_clock(params.get("Timestamp"), now)
    key_id = params.get("AccessKeyId", "")
    if not key_id:
        raise ApiError(400, "MissingAccessKeyId", "AccessKeyId is mandatory for this action.")
    cred = _lookup(credentials, key_id, params.get("SecurityToken"))
    expected, string_to_sign = rpc_signature(cred.secret, method, params)
    if not hmac.compare_digest(expected, params.get("Signature", "")):
        raise ApiError(
            400,
            "SignatureDoesNotMatch",
            f"Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}",
        )
    return key_id
