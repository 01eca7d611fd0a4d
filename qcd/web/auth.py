"""Who is asking: local users (scrypt hashes), browser sessions, proxy headers, CSRF tokens.

Passwords are stored only as ``scrypt$N$r$p$salt$hash`` (hashlib.scrypt, 16-byte
random salt). A browser session is a random cookie token of which only the SHA-256
is stored, with its CSRF token and expiry. API clients may send HTTP Basic
credentials instead of a cookie (no CSRF then: a browser never sends them unasked).
In ``proxy`` mode a reverse proxy has authenticated the user and names them in a
header, which is believed only from the proxy's addresses; the role comes from a local
account of that name, else a default.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select

from qcd.db.engine import Database
from qcd.db.models import User, UserRole, WebSession, utcnow
from qcd.errors import ConfigError

AUTH_MODES = ("local", "proxy")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8


@dataclass(frozen=True)
class Principal:
    """An authenticated user of the UI or API."""

    name: str
    role: UserRole
    csrf: str
    """The token state-changing forms must carry (empty for Basic-auth API calls)."""
    session_token: str | None = None

    @property
    def can_operate(self) -> bool:
        return self.role == UserRole.OPERATOR


def hash_password(password: str) -> str:
    """A salted scrypt hash in a self-describing string."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against :func:`hash_password`'s output."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


def add_user(db: Database, name: str, password: str, role: str) -> None:
    """Create a user, or reset the password and role of an existing one.

    Raises
    ------
    ValueError
        Empty or over-long name, password shorter than ``MIN_PASSWORD``, unknown role.
    """
    name = name.strip()
    if not name or len(name) > 64:
        raise ValueError(f"user name must be 1-64 characters, got {name!r}")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must have at least {MIN_PASSWORD} characters")
    try:
        user_role = UserRole(role)
    except ValueError:
        raise ValueError(f"role {role!r} is not allowed; allowed: "
                         f"{', '.join(r.value for r in UserRole)}") from None
    hashed = hash_password(password)
    with db.session() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            session.add(User(name=name, password_hash=hashed, role=user_role, active=True))
        else:
            user.password_hash, user.role, user.active = hashed, user_role, True


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Resolves requests to :class:`Principal` and manages sessions."""

    def __init__(self, db: Database, mode: str = "local", session_hours: float = 12.0,
                 proxy_user_header: str = "X-Remote-User",
                 proxy_default_role: str = "viewer",
                 proxy_trusted_networks: Sequence[str] = ("127.0.0.1/32", "::1/128")) -> None:
        if mode not in AUTH_MODES:
            raise ConfigError(f"http.auth: {mode!r} is not allowed; allowed: "
                              f"{', '.join(AUTH_MODES)}")
        try:
            self.proxy_default_role = UserRole(proxy_default_role)
        except ValueError:
            raise ConfigError(f"http.proxy_default_role: {proxy_default_role!r} is not "
                              "allowed; allowed: viewer, operator") from None
        if session_hours <= 0:
            raise ConfigError(f"http.session_hours: {session_hours!r} is not allowed; "
                              "allowed: hours > 0")
        try:
            self.trusted = [ipaddress.ip_network(n, strict=False)
                            for n in proxy_trusted_networks]
        except ValueError as exc:
            raise ConfigError(f"http.proxy_trusted_networks: {exc}; allowed: CIDR networks "
                              "like 10.0.0.0/8") from None
        self.db = db
        self.mode = mode
        self.session_ttl = dt.timedelta(hours=session_hours)
        self.proxy_user_header = proxy_user_header.lower()
        self._secret = secrets.token_bytes(32)
        """Signs proxy-mode CSRF tokens; new at each start (forms are short-lived)."""

    # ---- local users

    def check_password(self, name: str, password: str) -> User | None:
        with self.db.session() as session:
            user = session.scalar(select(User).where(User.name == name, User.active.is_(True)))
        if user is None:
            verify_password(password, hash_password("timing-equaliser"))
            return None
        return user if verify_password(password, user.password_hash) else None

    def login(self, name: str, password: str) -> str | None:
        """A new session token for valid credentials, else None."""
        user = self.check_password(name, password)
        if user is None:
            return None
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self.db.session() as session:
            session.execute(delete(WebSession).where(WebSession.expires_at < now))
            session.add(WebSession(token_sha256=_sha(token), user_id=user.id,
                                   csrf_token=secrets.token_urlsafe(32), created_at=now,
                                   expires_at=now + self.session_ttl))
        return token

    def logout(self, token: str) -> None:
        with self.db.session() as session:
            session.execute(delete(WebSession).where(WebSession.token_sha256 == _sha(token)))

    # ---- resolving a request

    def _from_proxy(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    def resolve(self, headers: dict[str, str], cookie_token: str | None,
                client: str = "") -> Principal | None:
        """The principal behind a request's headers (lower-case keys) and session cookie;
        ``client`` is the peer's address (proxy mode trusts only its proxies)."""
        if self.mode == "proxy":
            name = headers.get(self.proxy_user_header, "").strip()
            if not name or not self._from_proxy(client):
                return None
            with self.db.session() as session:
                user = session.scalar(select(User).where(User.name == name,
                                                         User.active.is_(True)))
            role = user.role if user is not None else self.proxy_default_role
            csrf = hmac.new(self._secret, name.encode(), hashlib.sha256).hexdigest()
            return Principal(name, role, csrf)
        basic = _basic(headers.get("authorization", ""))
        if basic is not None:
            user = self.check_password(*basic)
            return Principal(user.name, user.role, "") if user is not None else None
        if not cookie_token:
            return None
        with self.db.session() as session:
            row = session.execute(
                select(WebSession, User).join(User, User.id == WebSession.user_id)
                .where(WebSession.token_sha256 == _sha(cookie_token))).first()
        if row is None:
            return None
        sess, user = row
        if sess.expires_at < utcnow() or not user.active:
            return None
        return Principal(user.name, user.role, sess.csrf_token, cookie_token)


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        name, sep, password = base64.b64decode(value.strip()).decode().partition(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if sep else None


def csrf_ok(principal: Principal, supplied: str | None) -> bool:
    """Whether a state-changing request carries the principal's CSRF token.

    Basic-auth API calls have no token and need none: qcd never sends a Basic
    challenge, so browsers hold no Basic credentials to attach to a forged request, and
    the API's POSTs also require a JSON body, which a cross-site form cannot send."""
    if not principal.csrf:
        return True
    # as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
    return bool(supplied) and hmac.compare_digest(
        principal.csrf.encode(), (supplied or "").encode("utf-8", "surrogatepass"))
