"""Console sessions: a signed, HttpOnly, SameSite=Strict cookie, and CSRF tokens bound to it.

A browser cannot sign requests with SigV4, so the console signs in once: the access key id and
secret are checked against the same keys as SigV4 (``TUNEFORGE_ACCESS_KEYS``), and the server
hands back a cookie that names the key and its expiry, signed with a key kept in the data
directory (so every API replica and restart accepts it). On a loopback bind with anonymous access
allowed the console is open, and the cookie only carries the CSRF secret.

Every state-changing request carries a CSRF token (a form field or the ``X-CSRF-Token`` header):
an HMAC of the session cookie, so a page elsewhere, which cannot read the cookie, cannot make one.
The edge refuses foreign ``Origin`` headers too; the token also covers browsers that send none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from tuneforge.errors import AccessDeniedException
from tuneforge.keyfile import read_or_create_key
from tuneforge.settings import Settings

COOKIE = "tuneforge_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
ANONYMOUS = "anonymous"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    identity: str
    """The access key id signed in with, or ``anonymous`` on an open loopback console."""
    cookie: str


class ConsoleSessions:
    def __init__(self, settings: Settings, key: bytes) -> None:
        self.settings = settings
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsoleSessions:
        return cls(settings, read_or_create_key(Path(settings.data_dir) / "console.key"))

    @property
    def open(self) -> bool:
        """No sign-in needed: a loopback bind with anonymous access allowed."""
        return self.settings.anonymous_allowed

    def _mac(self, scope: str, payload: str) -> str:
        digest = hmac.new(self._key, f"{scope}\0{payload}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")

    def issue(self, identity: str, now: float | None = None) -> Session:
        expires = int((now or time.time()) + SESSION_SECONDS)
        payload = f"{identity}.{expires}.{secrets.token_urlsafe(12)}"
        return Session(identity, f"{payload}.{self._mac('session', payload)}")

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session the cookie carries, or None for a missing, forged or expired one."""
        if not cookie or cookie.count(".") != 3:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac("session", payload)):
            return None
        identity, expires, _nonce = payload.split(".")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        if identity == ANONYMOUS and not self.open:
            return None
        if identity != ANONYMOUS and identity not in self.settings.access_keys:
            return None
        return Session(identity, cookie)

    def sign_in(self, access_key_id: str, secret: str) -> Session:
        """Check a key pair against the SigV4 keys; raises AccessDenied with the message SigV4 gives."""
        known = self.settings.access_keys.get(access_key_id.strip())
        if known is None or not hmac.compare_digest(known.encode(), secret.encode()):
            raise AccessDeniedException("The security token included in the request is invalid.")
        return self.issue(access_key_id.strip())

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.cookie)

    def check_csrf(self, session: Session | None, token: str | None) -> bool:
        return session is not None and token is not None and hmac.compare_digest(token, self.csrf_token(session))

    def secure(self, request: Request) -> bool:
        """Secure when asked for (``TUNEFORGE_SECURE_COOKIES``) or when the request came over HTTPS."""
        return self.settings.secure_cookies or request.url.scheme == "https"

    def set_cookie(self, request: Request, response: Response, session: Session) -> None:
        """HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), console paths only,
        and Secure (HTTPS only) behind TLS."""
        response.set_cookie(
            COOKIE,
            session.cookie,
            max_age=SESSION_SECONDS,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )
