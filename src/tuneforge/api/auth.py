"""SigV4 verification of Bedrock requests with botocore's own signer; bearer keys for OpenAI routes.

The server rebuilds the canonical request from exactly the headers the client signed, recomputes
the signature with :class:`botocore.auth.SigV4Auth` and the secret of the claimed access key, and
compares in constant time. The signer trusts a client's ``X-Amz-Content-SHA256`` header instead of
hashing the body, so that header must equal the hash of the body received; and the credential
scope must name this server's region and the ``bedrock`` service.

Anonymous means no credential at all: it passes only when the server binds to loopback and
``allow_anonymous`` is on (the embedded default). A credential that is presented is verified
whenever keys of its kind are configured; only a server with no keys of that kind ignores it, so
the placeholder credentials that boto3 (which always signs) and the openai SDK (which always sends
a key) carry keep working on a laptop.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tuneforge.errors import AccessDeniedException
from tuneforge.settings import Settings

SIGNING_NAME = "bedrock"
MAX_CLOCK_SKEW = timedelta(minutes=5)
_AUTH_PATTERN = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<headers>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
SIGV4_SCHEME = "AWS4-HMAC-SHA256"


def is_sigv4(authorization: str | None) -> bool:
    return (authorization or "").lstrip().startswith(SIGV4_SCHEME)


def verify_request(
    settings: Settings,
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    now: datetime | None = None,
) -> str | None:
    """Return the caller's access key id (None for an allowed anonymous call) or raise AccessDenied."""
    authorization = headers.get("authorization")
    if settings.anonymous_allowed and (not authorization or not settings.access_keys):
        return None
    if not authorization:
        raise AccessDeniedException("Missing Authentication Token: requests must be signed with SigV4")
    match = _AUTH_PATTERN.match(authorization.strip())
    if match is None:
        raise AccessDeniedException("Authorization header is not a valid AWS4-HMAC-SHA256 signature")
    key_id = match["key"]
    secret = settings.access_keys.get(key_id)
    if secret is None:
        raise AccessDeniedException(f"The security token included in the request is invalid: unknown key {key_id}")
    if match["service"] != SIGNING_NAME:
        raise AccessDeniedException(f"Credential should be scoped to correct service: '{SIGNING_NAME}'")
    if match["region"] != settings.region:
        raise AccessDeniedException(
            f"Credential should be scoped to a valid region, not '{match['region']}' "
            f"(this server's region is '{settings.region}')"
        )
    body_hash = hashlib.sha256(body).hexdigest()
    if not hmac.compare_digest(headers.get("x-amz-content-sha256", body_hash).encode(), body_hash.encode()):
        raise AccessDeniedException("The provided 'x-amz-content-sha256' header does not match what was computed.")
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AccessDeniedException("Missing or malformed X-Amz-Date header") from None
    now = now or datetime.now(UTC)
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise AccessDeniedException(
            f"Signature expired: {amz_date} is now earlier or later than the server time by more than 5 minutes"
        )
    signed = match["headers"].split(";")
    request = AWSRequest(method=method, url=url, data=body, headers={h: headers.get(h, "") for h in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key_id, secret), SIGNING_NAME, match["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise AccessDeniedException(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return key_id


def verify_bearer(settings: Settings, authorization: str | None) -> str | None:
    """OpenAI-compatible routes: a configured API key as ``Authorization: Bearer <key>``.

    Returns a label safe to log (the key's last four characters), or None for an allowed anonymous
    call; raises AccessDenied otherwise. Like SigV4 above, any key passes on an anonymous loopback
    server without API keys (the SDK insists on sending one), and none but a configured one where
    API keys are configured.
    """
    if settings.anonymous_allowed and (not authorization or not settings.api_keys):
        return None
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AccessDeniedException("Missing API key: send it as 'Authorization: Bearer <key>'")
    key = key.strip()
    if any(hmac.compare_digest(key.encode(), known.encode()) for known in settings.api_keys):
        return f"api-key:...{key[-4:]}"
    raise AccessDeniedException("Incorrect API key provided")
