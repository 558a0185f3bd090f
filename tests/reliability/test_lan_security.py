"""The app as a LAN server with a login: every route of the server refuses a client without a
session (except the login page and static assets), and a logged-in client gets no file outside
the app's folders, whatever the path looks like."""

from __future__ import annotations

import http.cookiejar
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest
from support import free_port

from .conftest import record

USER, PASSWORD = "ann", "pw-for-tests"
# What answers without a login: the login page and its form, logout, static files of the page,
# the login check (which answers 401) and Gradio's own startup check (true or false).
PUBLIC = {("GET", "/"), ("POST", "/login"), ("POST", "/login/"), ("GET", "/logout"), ("GET", "/favicon.ico"),
          ("GET", "/theme.css"), ("GET", "/robots.txt"), ("GET", "/manifest.json"), ("GET", "/pwa_icon"),
          ("GET", "/pwa_icon/{size}"), ("GET", "/svelte/{path:path}"), ("GET", "/static/{path:path}"),
          ("GET", "/assets/{path:path}"), ("GET", "/gradio_api/login_check"), ("GET", "/gradio_api/login_check/"),
          ("GET", "/gradio_api/startup-events")}

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app over a fresh workspace with a login, started as launch.py starts it."""
    from acestep.ui.app import launch_app

    root = tmp_path_factory.mktemp("lan")
    workspace = root / "workspace"
    (root / "secret.txt").write_text("outside the roots\n")
    port = free_port()
    app = launch_app(port=port, auth=[(USER, PASSWORD)], checkpoints_dir=root / "models", workspace_dir=workspace,
                     block=False)
    (workspace / "audio" / "inside.txt").write_text("inside the workspace\n")
    os.symlink(root / "secret.txt", workspace / "audio" / "link.txt")  # a link that leaves the roots
    try:
        yield app, f"http://127.0.0.1:{port}", root
    finally:
        app.close()


def request(opener, url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        with opener.open(urllib.request.Request(url, data=data, method=method, headers=headers), timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the running server, those of included routers too
    (`/gradio_api/...`), prefixed as they are served."""
    found = []

    def walk(route_list, prefix=""):
        for route in route_list:
            included = getattr(route, "original_router", None)
            if included is not None:
                context = getattr(route, "include_context", None)
                walk(included.routes, prefix + (getattr(context, "prefix", "") or ""))
                continue
            for method in sorted(getattr(route, "methods", None) or ()):
                if method != "HEAD":
                    found.append((method, prefix + route.path))

    walk(app.server_app.routes)
    return found


def test_every_route_refuses_a_client_without_a_session(server):
    app, base, root = server
    anonymous = urllib.request.build_opener()
    probed = routes(app)
    assert ("POST", "/gradio_api/upload") in probed and ("GET", "/gradio_api/heartbeat/{session_hash}") in probed
    answered = {}
    for method, path in probed:
        if (method, path) in PUBLIC:
            continue
        url = base + path.replace("{", "").replace("}", "")
        status, body = request(anonymous, url, method, b"{}" if method in ("POST", "PUT") else None)
        answered[(method, path)] = status
        assert b"inside the workspace" not in body and str(root).encode() not in body, path
    leaks = {route: status for route, status in answered.items() if status != 401}
    record("LAN routes", "routes probed without a login", len(answered), "answered without a login", len(leaks))
    assert not leaks, f"routes that answered without a login: {leaks}"
    assert len(answered) > 60
    assert request(anonymous, f"{base}/openapi.json")[0] == 401


@pytest.fixture(scope="module")
def user(server):
    _, base, _ = server
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    data = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    assert opener.open(urllib.request.Request(f"{base}/login", data=data), timeout=20).status == 200
    return opener


def test_a_logged_in_client_gets_files_inside_the_roots(server, user):
    _, base, root = server
    status, body = request(user, f"{base}/gradio_api/file={root / 'workspace' / 'audio' / 'inside.txt'}")
    assert status == 200 and body == b"inside the workspace\n"
    assert request(user, f"{base}/openapi.json")[0] == 404  # no route list, not even for users


@pytest.mark.parametrize("path", [
    "{root}/secret.txt",                                    # absolute, outside
    "{root}/workspace/../secret.txt",                       # .. out of a root
    "{root}/workspace/audio/../../secret.txt",
    "{root}/workspace/%2e%2e/secret.txt",                   # URL-encoded ..
    "{root}/workspace/%252e%252e/secret.txt",               # encoded twice
    "{root}/workspace/audio/link.txt",                      # a symlink in a root that leaves it
    "/etc/passwd",
    "{root}/workspace/audio/..%2f..%2fsecret.txt",
])
def test_no_file_outside_the_roots_is_served_whatever_the_path(server, user, path):
    _, base, root = server
    status, body = request(user, f"{base}/gradio_api/file=" + path.format(root=root))
    served = status not in (403, 404) or b"outside the roots" in body or b"root:" in body
    record("path traversal", "paths outside the roots asked for", 1, "served", int(served))
    assert status in (403, 404), (path, status)
    assert b"outside the roots" not in body and b"root:" not in body


def test_uploads_are_capped(server, user):
    app, base, _ = server
    from acestep.ui.app import MAX_UPLOAD

    assert app.max_file_size == 200 * 1024 * 1024 and MAX_UPLOAD == "200mb"
    boundary = "xyz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.wav\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * (201 * 1024 * 1024) + \
        f"\r\n--{boundary}--\r\n".encode()
    upload = urllib.request.Request(f"{base}/gradio_api/upload", data=body, method="POST",
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with user.open(upload, timeout=60) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    record("uploads", "uploads over the 200 MB cap", 1, "accepted", int(status != 413))
    assert status == 413


@pytest.mark.parametrize("cookie", ["access-token-x=forged", "garbage;;; ==", 'access-token="unterminated'])
def test_a_forged_or_malformed_session_cookie_is_refused(server, cookie):
    app, base, _ = server
    opener = urllib.request.build_opener()
    opener.addheaders = [("Cookie", cookie.replace("x", app.server_app.cookie_id, 1))]
    for path in ("/config", "/gradio_api/user", "/gradio_api/heartbeat/abc"):
        status = request(opener, base + path)[0]
        record("forged sessions", "requests with a forged or malformed cookie", 1, "let in", int(status != 401))
        assert status == 401, (cookie, path)
