"""Who is reviewing: the router's API keys (role `reviewer`), presented once per browser session.

Keys are checked by the router's own `KeyStore.authenticate` on every request, so a key removed
from the keys file stops working within a second, also for a signed-in browser. A browser signs in with
the key and gets a random session id in an HttpOnly, SameSite=Strict cookie; the key stays in
this process's memory, never in the cookie. API clients send `Authorization: Bearer <key>`.
Every form carries the session's CSRF token.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable, Optional

from services.router.keys import ApiKey, KeyStore

COOKIE = "graduate_review_session"
REVIEWER_ROLE = "reviewer"


@dataclass(frozen=True)
class Session:
    key: str
    csrf: str
    expires: float


class Sessions:
    """Signed-in browsers of this process (a restart signs everyone out)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._by_id: dict[str, Session] = {}

    def create(self, key: str) -> tuple[str, Session]:
        self._expire()
        sid = secrets.token_urlsafe(32)
        session = Session(key, secrets.token_urlsafe(24), self.clock() + self.ttl_s)
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: Optional[str]) -> Optional[Session]:
        session = self._by_id.get(sid or "")
        if session is not None and session.expires <= self.clock():
            del self._by_id[sid]
            return None
        return session

    def drop(self, sid: Optional[str]) -> None:
        self._by_id.pop(sid or "", None)

    def _expire(self) -> None:
        now = self.clock()
        for sid in [s for s, v in self._by_id.items() if v.expires <= now]:
            del self._by_id[sid]


class AuthError(Exception):
    """401 (no or an unknown key) or 403 (a key without the reviewer role, or not for this task)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reviewer:
    key: ApiKey
    session: Optional[Session]  # None: the key came in a header (no CSRF token needed)

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session else ""


def reviewer_key(keys: KeyStore, presented: str) -> ApiKey:
    """The reviewer key behind `presented`, or AuthError."""
    key = keys.authenticate(presented.strip()) if presented.strip() else None
    if key is None:
        raise AuthError(401, "unknown API key" if presented.strip() else "enter an API key")
    if key.role != REVIEWER_ROLE:
        raise AuthError(403, f"key {key.name!r} has role {key.role}; the review page needs a key with role reviewer "
                             "(graduate keys create NAME --role reviewer)")
    return key


def authenticate(keys: KeyStore, sessions: Sessions, authorization: Optional[str], sid: Optional[str]) -> Reviewer:
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        return Reviewer(reviewer_key(keys, presented), None)
    session = sessions.get(sid)
    if session is None:
        raise AuthError(401, "sign in with a reviewer key")
    return Reviewer(reviewer_key(keys, session.key), session)


def check_csrf(reviewer: Reviewer, token: Optional[str]) -> None:
    if reviewer.session is not None and not secrets.compare_digest(reviewer.session.csrf, token or ""):
        raise AuthError(403, "the form is stale (CSRF token mismatch): reload the page and submit again")


def safe_next(target: Optional[str], default: str = "/") -> str:
    """A same-site path to go to after signing in (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target
