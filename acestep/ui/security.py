"""The login gate: with a login configured, a client without a session reaches the login page and
the page's static files, and nothing else.

Gradio checks the login on its page, config, file and queue routes, but some of its routes answer
anyone (the user and token routes, run history, heartbeats, startup events). `LoginGate` sits in
front of all of them (`launch(app_kwargs={"middleware": [Middleware(LoginGate)]})`) and answers
401 to every other request that carries no valid session cookie.
"""

from __future__ import annotations

import json
from http.cookies import CookieError, SimpleCookie

# What a browser needs before it has logged in: the login page, its form, logout, static files;
# and the startup check Gradio's launch() makes of its own server (it answers true or false).
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/robots.txt",
                          "/manifest.json", "/gradio_api/login_check", "/gradio_api/login_check/",
                          "/gradio_api/startup-events"})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def session_user(app, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The user whose Gradio session cookie the request carries, or None."""
    cookies = SimpleCookie()
    for name, value in headers:
        if name.lower() == b"cookie":
            try:
                cookies.load(value.decode("latin-1"))
            except CookieError:
                return None
    for name in (f"access-token-{app.cookie_id}", f"access-token-unsecure-{app.cookie_id}"):
        if name in cookies and cookies[name].value in app.tokens:
            return app.tokens[cookies[name].value]
    return None


class LoginGate:
    """ASGI middleware over Gradio's app (see the module docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        gradio_app = scope.get("app")
        if getattr(gradio_app, "auth", None) is None and getattr(gradio_app, "auth_dependency", None) is None:
            return await self.app(scope, receive, send)
        if is_public(scope.get("path", "")) or session_user(gradio_app, scope.get("headers", [])) is not None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 4401})
        body = json.dumps({"detail": "Not authenticated: log in first."}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
