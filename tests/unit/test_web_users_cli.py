"""`qcd user add/list` (qcd.web.users_cli) on a migrated SQLite database."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from qcd.db.engine import Database
from qcd.db.models import User, UserRole
from qcd.web import users_cli
from qcd.web.auth import verify_password
from tests.conftest import make_settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    users_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_user_add_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path)
    Database(settings.database.url).upgrade()
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-password\n"))
    assert users_cli.run(settings, parse(["user", "add", "ann", "--role", "operator",
                                          "--password-stdin"])) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert users_cli.run(settings, parse(["user", "add", "bob", "--password-stdin"])) == 2
    assert "at least 8" in capsys.readouterr().err
    assert users_cli.run(settings, parse(["user", "list"])) == 0
    assert capsys.readouterr().out.strip() == "ann\toperator\tactive"
    db = Database(settings.database.url)
    with db.session() as session:
        (user,) = session.query(User).all()
        assert user.role == UserRole.OPERATOR
        assert verify_password("s3cret-password", user.password_hash)
    db.dispose()
    assert users_cli.run(settings, parse(["user", "disable", "ann"])) == 0
    assert users_cli.run(settings, parse(["user", "disable", "nobody"])) == 2
    assert users_cli.run(settings, parse(["user", "list"])) == 0
    assert capsys.readouterr().out.strip().endswith("ann\toperator\tdisabled")
    with pytest.raises(SystemExit):
        parse(["user", "add", "x", "--role", "admin"])
