"""Password hashing, sessions, Basic and proxy authentication, CSRF checks."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from qcd.db.engine import Database
from qcd.db.models import User, UserRole, WebSession
from qcd.errors import ConfigError
from qcd.web.auth import (
    Authenticator,
    add_user,
    csrf_ok,
    hash_password,
    verify_password,
)


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    """SQLite only: these tests need no second backend."""
    return sqlite_db


def test_hash_is_salted_scrypt_and_verifies() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$")
    assert verify_password("correct horse", a)
    assert not verify_password("wrong horse", a)
    assert not verify_password("x", "garbage") and not verify_password("x", "md5$1$2$3$4$5")


def test_add_user_validates_and_resets(db: Database) -> None:
    with pytest.raises(ValueError, match="at least 8"):
        add_user(db, "ann", "short", "viewer")
    with pytest.raises(ValueError, match="allowed: viewer, operator"):
        add_user(db, "ann", "long enough", "admin")
    add_user(db, "ann", "long enough", "viewer")
    add_user(db, "ann", "another one", "operator")
    with db.session() as session:
        (user,) = session.query(User).all()
        assert user.role == UserRole.OPERATOR
        assert "another one" not in user.password_hash
        assert verify_password("another one", user.password_hash)


def test_session_login_resolve_logout(db: Database) -> None:
    add_user(db, "ann", "long enough", "viewer")
    auth = Authenticator(db)
    assert auth.login("ann", "wrong password") is None
    assert auth.login("bob", "long enough") is None
    token = auth.login("ann", "long enough")
    assert token
    who = auth.resolve({}, token)
    assert who is not None and who.name == "ann" and not who.can_operate and who.csrf
    with db.session() as session:
        stored = session.query(WebSession).one()
        assert stored.token_sha256 != token  # only a hash of the cookie is kept
    assert auth.resolve({}, token + "x") is None
    auth.logout(token)
    assert auth.resolve({}, token) is None


def test_expired_session_is_refused(db: Database) -> None:
    add_user(db, "ann", "long enough", "viewer")
    auth = Authenticator(db)
    token = auth.login("ann", "long enough")
    with db.session() as session:
        session.query(WebSession).update({"expires_at": dt.datetime(2000, 1, 1)})
    assert auth.resolve({}, token) is None


def test_basic_auth_for_api_clients(db: Database) -> None:
    add_user(db, "op", "long enough", "operator")
    auth = Authenticator(db)
    good = "Basic " + base64.b64encode(b"op:long enough").decode()
    bad = "Basic " + base64.b64encode(b"op:nope").decode()
    who = auth.resolve({"authorization": good}, None)
    assert who is not None and who.can_operate and who.csrf == ""
    assert auth.resolve({"authorization": bad}, None) is None
    assert auth.resolve({"authorization": "Basic !!!"}, None) is None


def test_proxy_mode_takes_the_header_and_local_roles(db: Database) -> None:
    add_user(db, "op", "long enough", "operator")
    auth = Authenticator(db, mode="proxy", proxy_user_header="X-Forwarded-User",
                         proxy_trusted_networks=("10.1.0.0/16",))
    assert auth.resolve({}, None, "10.1.2.3") is None
    # the header is believed only from the proxy's addresses
    assert auth.resolve({"x-forwarded-user": "op"}, None, "10.2.0.1") is None
    assert auth.resolve({"x-forwarded-user": "op"}, None, "") is None
    viewer = auth.resolve({"x-forwarded-user": "someone"}, None, "10.1.2.3")
    operator = auth.resolve({"x-forwarded-user": "op"}, None, "10.1.9.9")
    assert viewer is not None and viewer.role == UserRole.VIEWER
    assert operator is not None and operator.role == UserRole.OPERATOR
    assert csrf_ok(operator, operator.csrf) and not csrf_ok(operator, viewer.csrf)


def test_bad_settings_are_config_errors(db: Database) -> None:
    with pytest.raises(ConfigError, match="http.auth"):
        Authenticator(db, mode="none")
    with pytest.raises(ConfigError, match="proxy_default_role"):
        Authenticator(db, mode="proxy", proxy_default_role="admin")
    with pytest.raises(ConfigError, match="proxy_trusted_networks"):
        Authenticator(db, mode="proxy", proxy_trusted_networks=("10.0.0.0/33",))


def test_csrf_ok() -> None:
    from qcd.web.auth import Principal

    p = Principal("a", UserRole.OPERATOR, "tok")
    assert csrf_ok(p, "tok") and not csrf_ok(p, None) and not csrf_ok(p, "tok2")
    assert csrf_ok(Principal("a", UserRole.OPERATOR, ""), None)
