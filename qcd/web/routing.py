"""The web layer's plain request and response values and its route table.

Kept independent of the HTTP server so that handlers are unit-tested by calling
:meth:`Router.dispatch` with a :class:`Request`, no socket needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                "style-src 'self'; script-src 'none'; frame-ancestors 'none'; "
                                "form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass
class Request:
    """One HTTP request; header names are lower-case."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str = ""
    """The peer's IP address (the reverse proxy's, behind one)."""

    @classmethod
    def build(cls, method: str, target: str, headers: dict[str, str] | None = None,
              body: bytes = b"", client: str = "") -> Request:
        path, _, qs = target.partition("?")
        query = {k: v[0] for k, v in parse_qs(qs, keep_blank_values=True).items()}
        return cls(method.upper(), path, query, {k.lower(): v for k, v in
                                                  (headers or {}).items()}, body, client)

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {k: m.value for k, m in jar.items()}

    def form(self) -> dict[str, str]:
        if not self.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            return {}
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}

    def json(self) -> Any:
        """The body as JSON, or None when it is not a JSON request."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    @property
    def target(self) -> str:
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in self.query.items())
        return self.path + (f"?{qs}" if qs else "")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def html(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, indent=1, default=str).encode(),
                   "application/json")

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        return cls(status, b"", "text/plain", [("Location", location)])

    def all_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", self.content_type), *SECURITY_HEADERS, *self.headers]


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool = True
    """False: served to anyone (login page, stylesheet, OpenAPI document)."""


class Router:
    """Regex routes: named groups become keyword arguments of the handler."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler, auth: bool = True) -> None:
        self.routes.append(Route(method, re.compile(f"^{pattern}$"), handler, auth))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | int:
        """The route and its arguments, or 404 / 405."""
        allowed = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, m.groupdict()
            allowed = True
        return 405 if allowed else 404
