"""Passwords, sessions and login throttling for the diagnostic page.

Passwords are stored only as scrypt hashes (``scrypt$N$r$p$salt$key``, standard library). A
session is a random token in an HttpOnly, SameSite=Strict cookie, held in memory: a restart logs
everyone out, which on a gateway is a feature. Each session carries its own CSRF token. Failed
logins are counted per client address and per user name. Past the limit an address is refused
without even looking at the password, for a lockout that doubles each time. A name under attack
is never locked (that would lock its owner out from any LAN machine): it only slows down the
addresses that have failed themselves.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Literal

from agent.config.models import PASSWORD_HASH

__all__ = [
    "DUMMY_HASH",
    "LoginThrottle",
    "Role",
    "Session",
    "SessionStore",
    "fingerprint",
    "hash_password",
    "verify_password",
]

Role = Literal["viewer", "technician"]

# N=2**14, r=8 costs 16 MiB and roughly 50 ms on a Raspberry Pi 4: dear enough to make a stolen
# config file slow to attack, cheap enough that two logins at once do not starve the gateway.
_N, _R, _P = 2**14, 8, 1
_KEY_BYTES = 32
# Hashes come from the config file; refuse parameters that would make one login cost more
# memory than the gateway has (a typo'd N of 2**30 is 1 TiB).
_MAX_MEMORY = 64 * 2**20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """A new ``scrypt$N$r$p$salt$key`` hash of ``password`` with a random salt."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_KEY_BYTES, maxmem=_MAX_MEMORY
    )
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, password_hash: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for any malformed hash."""
    if not re.fullmatch(PASSWORD_HASH, password_hash):
        return False
    _, n_text, r_text, p_text, salt_text, key_text = password_hash.split("$")
    n, r, p = int(n_text), int(r_text), int(p_text)
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or 128 * r * n > _MAX_MEMORY:
        return False
    try:
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        return False
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(expected),
        maxmem=_MAX_MEMORY + 2**20,
    )
    return hmac.compare_digest(key, expected)


# Verified against unknown user names so that a wrong name costs as long as a wrong password.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclasses.dataclass(slots=True)
class Session:
    token: str
    user: str
    role: Role
    csrf: str
    fingerprint: str
    """Digest of the user's password hash and role at login: a changed config ends the session."""
    created: float
    last_seen: float


def fingerprint(role: str, password_hash: str) -> str:
    return hashlib.sha256(f"{role}\0{password_hash}".encode()).hexdigest()[:32]


class SessionStore:
    """Sessions in memory, bounded per user and in all.

    A login past ``per_user`` ends that user's oldest session, so 64 viewer logins cannot evict
    the technician. Past ``max_sessions`` in all, the oldest session of the user who holds the
    most goes.
    """

    def __init__(
        self,
        *,
        idle_s: float,
        max_age_s: float,
        per_user: int = 4,
        max_sessions: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.per_user = per_user
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, role: Role, fingerprint: str) -> Session:
        now = self._clock()
        self._prune(now)
        theirs = self.of(user)
        for oldest in theirs[: max(0, len(theirs) - self.per_user + 1)]:
            del self._sessions[oldest.token]
        while len(self._sessions) >= self.max_sessions:
            counts = Counter(s.user for s in self._sessions.values())
            del self._sessions[self.of(counts.most_common(1)[0][0])[0].token]
        session = Session(
            token=secrets.token_urlsafe(32),
            user=user,
            role=role,
            csrf=secrets.token_urlsafe(32),
            fingerprint=fingerprint,
            created=now,
            last_seen=now,
        )
        self._sessions[session.token] = session
        return session

    def of(self, user: str) -> list[Session]:
        """The user's sessions, oldest first."""
        return [s for s in self._sessions.values() if s.user == user]

    def get(self, token: str | None, *, touch: bool = True) -> Session | None:
        """The live session of ``token``; ``touch`` (a user's action) restarts its idle time."""
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self.idle_s or now - session.created > self.max_age_s:
            del self._sessions[token]
            return None
        if touch:
            session.last_seen = now
        return session

    def delete(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def _prune(self, now: float) -> None:
        stale = [
            t
            for t, s in self._sessions.items()
            if now - s.last_seen > self.idle_s or now - s.created > self.max_age_s
        ]
        for token in stale:
            del self._sessions[token]


@dataclasses.dataclass(slots=True)
class _Failures:
    count: int = 0
    lockouts: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Counts failed logins per key (a client address, a user name) and locks keys out.

    After ``max_failures`` failures a key is locked for ``lockout_s``, doubling with each further
    lockout up to an hour. A success clears the key. Keys idle for an hour are forgotten, and at
    most ``max_keys`` are kept, so a flood of addresses cannot grow memory without bound.
    """

    MAX_LOCKOUT_S = 3600.0

    def __init__(
        self,
        *,
        max_failures: int,
        lockout_s: float,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key may try again; 0 when none is locked."""
        now = self._clock()
        waits = [f.locked_until - now for k in keys if (f := self._keys.get(k)) is not None]
        return max([0.0, *waits])

    def has_failed(self, key: str) -> bool:
        """Whether ``key`` failed within the last hour (and has not succeeded since)."""
        entry = self._keys.get(key)
        return entry is not None and self._clock() - entry.last <= self.MAX_LOCKOUT_S

    def failed(self, *keys: str) -> bool:
        """Count a failure for each key; True when one of them just got locked."""
        now = self._clock()
        locked = False
        for key in keys:
            entry = self._keys.pop(key, None) or _Failures()
            if now - entry.last > self.MAX_LOCKOUT_S:
                entry = _Failures()
            entry.count += 1
            entry.last = now
            if entry.count >= self.max_failures:
                entry.count = 0
                wait = min(self.lockout_s * 2.0**entry.lockouts, self.MAX_LOCKOUT_S)
                entry.lockouts += 1
                entry.locked_until = now + wait
                locked = True
            self._keys[key] = entry
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return locked

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._keys.pop(key, None)
