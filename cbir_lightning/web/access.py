"""Who may talk to the server: a Host-header allow-list (against DNS rebinding) and an optional token.

With a token, every ``/api`` request must carry it, as ``Authorization: Bearer TOKEN`` or as the
``cbir_token`` cookie. Opening the page once as ``/?token=TOKEN`` sets that cookie (HttpOnly,
SameSite=Strict) and redirects to ``/``, so the page and its images work without the token in any URL.
The page itself (static HTML, no data) is served to anyone who passes the Host check.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from http.cookies import SimpleCookie

from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
COOKIE = "cbir_token"
TOKEN_ENV = "CBIR_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable from the network


def host_pattern(host: str) -> str:
    """``host`` as it appears in a Host header (IPv6 literals in brackets), lower case."""
    host = host.strip().lower()
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


def allowed_hosts(bind_host: str, extra: list[str] | None = None) -> list[str]:
    """The Host names accepted: loopback names, the bind host, ``extra`` (``*`` allows any).

    A wildcard bind (``0.0.0.0``, ``::``) cannot know the names clients use; this machine's host name
    and fully qualified name are added, anything else must come in ``extra`` (``--allowed-hosts``).
    """
    hosts = list(LOOPBACK_HOSTS)
    if bind_host in WILDCARD_HOSTS:
        hosts += [socket.gethostname(), socket.getfqdn()]
    else:
        hosts.append(bind_host)
    hosts += list(extra or [])
    return sorted({host_pattern(h) for h in hosts if h.strip()})


def same_token(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def request_token(headers: Headers) -> str | None:
    """The token a request carries: the bearer token, else the cookie."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header carries no token
        return None
    return cookie[COOKIE].value if COOKIE in cookie else None


class TokenMiddleware:
    """Refuses ``/api`` requests without the token (401); ``/?token=TOKEN`` sets the cookie."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        given = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("token")
        if given is not None and path in ("/", "/index.html"):
            response = self.cookie_redirect() if same_token(given, self.token) else self.refused()
            await response(scope, receive, send)
            return
        if path.startswith("/api") and not same_token(request_token(Headers(scope=scope)), self.token):
            await self.refused()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def cookie_redirect(self) -> RedirectResponse:
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
        return response

    @staticmethod
    def refused() -> JSONResponse:
        return JSONResponse(
            {
                "detail": "this server needs its token: open the page once as /?token=TOKEN, "
                "or send the header Authorization: Bearer TOKEN"
            },
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
