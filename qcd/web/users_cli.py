"""``qcd user add NAME --role viewer|operator``, ``list``, ``disable NAME``: web UI accounts.

The password is asked twice on the terminal, or read from the first line of stdin
with ``--password-stdin`` (for scripts); it never appears on the command line.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

ROLES = ("viewer", "operator")


def add_parser(sub: Any) -> None:
    """Register ``user`` on the ``qcd`` sub-command parser."""
    user = sub.add_parser("user", help="manage web UI users")
    actions = user.add_subparsers(dest="user_action", required=True)
    add = actions.add_parser("add", help="create a user, or reset its password and role")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="viewer",
                     help="viewer reads; operator also acknowledges alerts (default viewer)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin")
    actions.add_parser("list", help="list users and roles")
    disable = actions.add_parser("disable", help="refuse a user's logins and end its sessions")
    disable.add_argument("name")


def run(settings: Any, args: argparse.Namespace) -> int:
    """Run ``qcd user ...``; exit code 2 for a refused name, password or role."""
    from sqlalchemy import delete, select

    from qcd.db.engine import Database
    from qcd.db.models import User, WebSession
    from qcd.web.auth import add_user

    db = Database(settings.database.url)
    try:
        db.check()
        if args.user_action == "list":
            with db.session() as session:
                for u in session.scalars(select(User).order_by(User.name)):
                    print(f"{u.name}\t{u.role.value}\t{'active' if u.active else 'disabled'}")
            return 0
        if args.user_action == "disable":
            with db.session() as session:
                user = session.scalar(select(User).where(User.name == args.name))
                if user is None:
                    print(f"qcd: no user {args.name!r}", file=sys.stderr)
                    return 2
                user.active = False
                session.execute(delete(WebSession).where(WebSession.user_id == user.id))
            print(f"user {args.name} disabled")
            return 0
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                print("qcd: the passwords differ", file=sys.stderr)
                return 2
        try:
            add_user(db, args.name, password, args.role)
        except ValueError as exc:
            print(f"qcd: {exc}", file=sys.stderr)
            return 2
        print(f"user {args.name} ({args.role}) saved")
        return 0
    finally:
        db.dispose()
