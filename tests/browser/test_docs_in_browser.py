"""The two services as a browser sees them, in Debian's headless Chromium driven by playwright-core.

One test, in steps, each with a screenshot in the output folder (results/browser/, or BROWSER_RESULTS_DIR):

1. the users service's /docs (Swagger UI) and /redoc render from the service's own assets, and no request
   the browser makes during the whole test leaves the machine;
2. "Authorize" logs in, through the OAuth2 password flow, at the auth service's /token (another origin,
   allowed by CORS because the docs' own origin is in CORS_ORIGINS);
3. "Try it out" / "Execute" on GET /users/me shows 200 and the user signed up by the test;
4. a page on a third origin, listed in CORS_ORIGINS, logs in and shows the user with fetch;
5. the same page on a fourth origin, not listed, is blocked by CORS (login, and /users/me with a valid token).

Needs /usr/bin/chromium and playwright-core (tests/browser/install.sh installs both, and this test runs it
when they are missing); if they cannot be installed the test is skipped, except under CI=true, where it fails.
"""

import functools
import http.server
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import service_env
from tests.processes import REPO, ServiceProcess, free_port

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT_PACKAGE = HERE / "node_modules" / "playwright-core" / "package.json"
README_SCREENSHOT = REPO / "deploy" / "screenshots" / "docs-logged-in.png"
DRIVER_TIMEOUT_SECONDS = 180


def results_dir() -> Path:
    folder = Path(os.environ.get("BROWSER_RESULTS_DIR", REPO / "results" / "browser"))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def browser_tools_missing() -> str | None:
    wanted = json.loads((HERE / "package.json").read_text())["dependencies"]["playwright-core"]
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}"
    if shutil.which("node") is None:
        return "no node on PATH"
    if not PLAYWRIGHT_PACKAGE.exists() or json.loads(PLAYWRIGHT_PACKAGE.read_text())["version"] != wanted:
        return f"playwright-core {wanted} not installed in {HERE / 'node_modules'}"
    return None


@pytest.fixture(scope="module")
def out_dir() -> Path:
    return results_dir()


@pytest.fixture(scope="module")
def browser_tools(out_dir: Path) -> None:
    """Chromium and playwright-core, installed by install.sh when missing; skip (fail under CI=true) if impossible."""
    if browser_tools_missing() is None:
        return
    install_log = out_dir / "install.log"
    with install_log.open("wb") as log:
        installed = subprocess.run(
            ["bash", str(HERE / "install.sh")], check=False, stdout=log, stderr=subprocess.STDOUT, timeout=900
        )
    missing = browser_tools_missing()
    if missing is None:
        return
    reason = f"browser cannot be installed ({missing}; install.sh exited {installed.returncode}, see {install_log})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class PageServer:
    """The client page (site/index.html), served as static files from one 127.0.0.1 port."""

    port: int

    def __post_init__(self) -> None:
        handler = functools.partial(QuietHandler, directory=str(HERE / "site"))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"page-{self.port}", daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class BrowserStack:
    auth_url: str
    users_url: str
    allowed_page: PageServer
    refused_page: PageServer


@pytest.fixture(scope="module")
def browser_stack(browser_tools: None, database_url: str, out_dir: Path) -> Iterator[BrowserStack]:
    auth_port, users_port = free_port(), free_port()
    allowed_page, refused_page = PageServer(free_port()), None
    started: list[ServiceProcess] = []
    try:
        refused_page = PageServer(free_port())
        users_origin = f"http://127.0.0.1:{users_port}"
        # The docs' own origin (its "Authorize" posts to the auth service) and the allowed page; not the refused one.
        env = service_env(
            database_url,
            CORS_ORIGINS=f"{users_origin},{allowed_page.origin}",
            AUTH_PUBLIC_URL=f"http://127.0.0.1:{auth_port}",
        )
        for service, port in (("auth", auth_port), ("users", users_port)):
            started.append(ServiceProcess(service, port, env, out_dir / f"{service}.log", workers=1).start())
        yield BrowserStack(started[0].url, started[1].url, allowed_page, refused_page)
    finally:
        for process in started:
            process.stop()
        for page in (allowed_page, refused_page):
            if page is not None:
                page.stop()


def write_summary(result: dict, out_dir: Path) -> str:
    """What the browser saw, step by step, in plain words: out_dir/summary.txt."""
    steps = result["steps"]
    lines = [f"Chromium {result['chromium']}; {len(result['requests'])} requests made by the pages:"]
    lines += [f"  {line}" for line in result["requests"]]
    lines.append(
        f"page requests off loopback: {result['offLoopbackRequests'] or 'none'}"
        f" (refused by the page's Content-Security-Policy before any connection: {result['blockedByCsp'] or 'none'})"
    )
    lines.append(
        "Chromium's own attempts to reach the outside, caught and refused by the sink proxy: "
        + (", ".join(sorted(set(result["blockedBrowserConnections"]))) or "none")
    )
    if "docs" in steps:
        docs = steps["docs"]
        lines.append(f"1 /docs: HTTP {docs['httpStatus']}, title {docs['title']!r}, {docs['operations']} operations")
    if "redoc" in steps:
        lines.append(f"1b /redoc: HTTP {steps['redoc']['httpStatus']}, heading {steps['redoc']['title']!r}")
    if "authorize" in steps:
        auth = steps["authorize"]
        said = [line for line in auth["dialogText"].splitlines() if line.startswith(("Authorized", "username"))]
        lines.append(
            f"2 Authorize: POST {auth['tokenRequestUrl']} -> {auth['tokenStatus']}; dialog says {' / '.join(said)}; "
            f"{auth.get('lockedOperations')} operations locked"
        )
    if "tryItOut" in steps:
        try_it = steps["tryItOut"]
        lines.append(
            f"3 Try it out GET /users/me: status on page {try_it['statusOnPage']}, "
            f"username on page {try_it['usernameOnPage']}"
        )
    if "allowedOrigin" in steps:
        lines.append(f"4 page on {steps['allowedOrigin']['origin']} (allowed): {steps['allowedOrigin']['status']}")
    if "refusedOrigin" in steps:
        refused = steps["refusedOrigin"]
        lines.append(f"5 page on {refused['origin']} (refused): login: {refused['login']['status']}")
        lines.append(f"  /users/me with a valid token: {refused['usersMe']['status']}")
        lines += [f"  console: {line}" for line in refused["corsConsoleMessages"]]
    if result["error"]:
        lines.append(f"stopped: {result['error']}")
    text = "\n".join(lines) + "\n"
    (out_dir / "summary.txt").write_text(text)
    return text


def test_docs_and_pages_in_chromium(browser_stack: BrowserStack, out_dir: Path) -> None:
    stack = browser_stack
    username, password = f"browser_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(10)}"
    signup = requests.post(f"{stack.users_url}/users", json={"username": username, "password": password}, timeout=10)
    assert signup.status_code == 201, signup.text
    token = requests.post(f"{stack.auth_url}/token", data={"username": username, "password": password}, timeout=10)
    assert token.status_code == 200, token.text

    config = out_dir / "config.json"
    config.write_text(
        json.dumps(
            {
                "chromiumPath": CHROMIUM,
                "usersUrl": stack.users_url,
                "authUrl": stack.auth_url,
                "allowedPageUrl": f"{stack.allowed_page.origin}/index.html",
                "refusedPageUrl": f"{stack.refused_page.origin}/index.html",
                "username": username,
                "password": password,
                "accessToken": token.json()["access_token"],
                "outDir": str(out_dir),
            }
        )
    )
    driver = subprocess.run(
        ["node", str(HERE / "drive.mjs"), str(config)],
        check=False,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_SECONDS,
    )
    (out_dir / "driver.log").write_text(driver.stdout + driver.stderr)
    config.unlink()  # it holds the test user's password and token
    result_path = out_dir / "result.json"
    assert result_path.exists(), (
        f"the driver wrote no result (exit {driver.returncode}):\n{driver.stdout}{driver.stderr}"
    )
    result = json.loads(result_path.read_text())
    summary = write_summary(result, out_dir)
    print(summary)
    assert result["error"] is None, (
        f"{result['error']}\nconsole: {result['console']}\nfailed: {result['failedRequests']}"
    )
    assert driver.returncode == 0, driver.stderr

    # Nothing left the machine. Every request the pages sent went to 127.0.0.1. A page may *ask* for something
    # elsewhere (Redoc always asks for Redocly's logo on a CDN) only if the page's Content-Security-Policy
    # refused it before any connection; and Chromium's only way out, the sink proxy, saw none of those hosts.
    sent = [line for line in result["requests"] if line.split(" ", 1)[1] not in result["blockedByCsp"]]
    web_requests = [line for line in sent if " http" in line or " ws" in line]
    assert all(" http://127.0.0.1:" in line for line in web_requests), web_requests
    assert set(result["offLoopbackRequests"]) <= set(result["blockedByCsp"]), result["offLoopbackRequests"]
    asked_hosts = {urlsplit(url).hostname for url in result["offLoopbackRequests"]}
    assert not [line for line in result["blockedBrowserConnections"] if any(host in line for host in asked_hosts)]

    # 1. /docs and /redoc rendered, from the service's own assets.
    docs = result["steps"]["docs"]
    assert docs["httpStatus"] == 200
    assert docs["title"] == "Users service", docs
    assert docs["operations"] >= 8 and docs["authorizeButton"], docs
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert f"GET {stack.users_url}/docs-assets/{asset}" in result["requests"], asset
    redoc = result["steps"]["redoc"]
    assert redoc["httpStatus"] == 200 and redoc["title"].startswith("Users service"), redoc

    # 2. Authorize logged in at the auth service's /token, cross-origin.
    authorize = result["steps"]["authorize"]
    assert authorize["tokenRequestUrl"] == f"{stack.auth_url}/token"
    assert authorize["tokenStatus"] == 200, result["console"]
    assert "Authorized" in authorize["dialogText"] and username in authorize["dialogText"], authorize
    assert authorize["lockedOperations"] >= 1 and authorize["unlockedOperations"] == 0, authorize

    # 3. Try it out on GET /users/me: 200 and the user, read off the page.
    try_it_out = result["steps"]["tryItOut"]
    assert try_it_out["requestUrl"] == f"{stack.users_url}/users/me"
    assert try_it_out["sentAuthorization"] == "Bearer"
    assert try_it_out["statusOnPage"] == "200", try_it_out
    assert try_it_out["usernameOnPage"] == username, try_it_out

    # 4. The allowed origin's page shows the user.
    allowed = result["steps"]["allowedOrigin"]
    assert allowed["state"] == "ok", allowed
    assert f"signed in as {username}" in allowed["status"] and "GET /users/me 200" in allowed["status"], allowed
    assert json.loads(allowed["result"])["username"] == username

    # 5. The refused origin's page: both calls blocked by the browser, and the browser says it was CORS.
    refused = result["steps"]["refusedOrigin"]
    assert refused["login"]["state"] == "error" and "CORS" in refused["login"]["status"], refused
    assert refused["usersMe"]["state"] == "error" and "GET /users/me failed" in refused["usersMe"]["status"], refused
    blocked = refused["corsConsoleMessages"]
    assert any(f"{stack.auth_url}/token" in line for line in blocked), blocked
    assert any(f"{stack.users_url}/users/me" in line for line in blocked), blocked
    assert all(refused["origin"] in line for line in blocked), blocked

    # The screenshot in deploy/screenshots/: written the first time, refreshed with BROWSER_UPDATE_SCREENSHOT=1.
    if not README_SCREENSHOT.exists() or os.environ.get("BROWSER_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(try_it_out["readmeScreenshot"], README_SCREENSHOT)
