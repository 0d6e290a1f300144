"""A real browser against a real lead_intake: Debian's Chromium driven by Playwright, pages served on two origins.

Playwright never downloads a browser here: `make browser-deps` installs Debian's chromium, and a missing one fails
the tests rather than skipping them.
"""

from __future__ import annotations

import html
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from services.lead_intake import store
from services.lead_intake.access import create_key
from services.lead_intake.settings import Settings
from shared.runtime import standalone_unit_of_work
from tests.support.infra import free_port
from tests.support.polling import eventually
from tests.support.stack import ServiceProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = Path(__file__).parent / "pages"
FORM_ID = "contact"
ADMIN_KEY = "browser-test-admin-key"
# Nothing listens there: intake only writes its outbox, and its relay retries quietly.
DEAD_BROKER = "127.0.0.1:1"


class PageServer(ThreadingHTTPServer):
    """One web origin serving the pages under pages/, their ${name} placeholders filled from `values`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self.values: dict[str, str] = {}

    @property
    def origin(self) -> str:
        """The origin a browser sees for these pages."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, page: str) -> str:
        """Address of one page."""
        return f"{self.origin}/{page}"

    def render(self, name: str) -> bytes | None:
        """A page with its placeholders filled in, or None if there is no such page."""
        path = PAGES / name
        if "/" in name or not name.endswith(".html") or not path.is_file():
            return None
        values = {key: html.escape(value, quote=True) for key, value in self.values.items()}
        return Template(path.read_text()).substitute(values).encode()


class _PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        body = self.server.render(self.path.split("?", 1)[0].lstrip("/"))
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output to what fails


@dataclass(frozen=True)
class Intake:
    """The running lead_intake process, with its registered form and public form key."""

    url: str
    form_key: str

    @property
    def admin_headers(self) -> dict[str, str]:
        """Authorization as the admin."""
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def submit_as_admin(self, email: str) -> dict[str, Any]:
        """Post `email` alone as the admin: `merged` tells that a lead with it exists, `captured` that none did."""
        async with httpx.AsyncClient(base_url=self.url, headers=self.admin_headers) as client:
            response = await client.post("/v1/leads", json={"email": email})
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def lead(self, lead_id: str) -> dict[str, Any]:
        """The lead as stored."""
        async with httpx.AsyncClient(base_url=self.url, headers=self.admin_headers) as client:
            response = await client.get(f"/v1/leads/{lead_id}")
        assert response.status_code == 200, response.text
        lead: dict[str, Any] = response.json()
        return lead


def _serve(server: PageServer) -> Iterator[PageServer]:
    thread = threading.Thread(target=server.serve_forever, name=f"pages-{server.origin}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def site() -> Iterator[PageServer]:
    """Origin A: the site the form is registered for."""
    yield from _serve(PageServer())


@pytest.fixture(scope="session")
def other_site() -> Iterator[PageServer]:
    """Origin B: a site the form does not list."""
    yield from _serve(PageServer())


async def _wait_alive(process: ServiceProcess) -> None:
    # /readyz stays 503 while the broker is down, so liveness is what tells the process serves requests.
    async def alive() -> bool:
        if process.exited():
            raise AssertionError("lead_intake exited")
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(process.url + "/healthz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        await eventually(alive, timeout=60, message="lead_intake answering /healthz")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log tail:\n{process.log_tail()}") from None


async def _register_form(intake_url: str, site: PageServer) -> None:
    form = {
        "name": "Contact us",
        "allowed_origins": [site.origin],
        "redirect_urls": [site.url("thanks.html")],
        "requires_consent": True,
    }
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        response = await client.put(f"{intake_url}/v1/forms/{FORM_ID}", json=form)
    assert response.status_code == 200, response.text


async def _create_form_key(database_url: str, site: PageServer) -> str:
    settings = Settings(database_url=database_url)
    async with standalone_unit_of_work(settings, metadata=store.metadata, migrations=store.MIGRATIONS) as uow:
        issued = await create_key(uow, name="site", kind="form", origins=[site.origin], forms=[FORM_ID])
    return issued.secret


@pytest.fixture(scope="session")
async def intake(
    tmp_path_factory: pytest.TempPathFactory, site: PageServer, other_site: PageServer
) -> AsyncIterator[Intake]:
    """lead_intake as a process on SQLite, with form `contact` registered for `site` and a public key for it."""
    directory = tmp_path_factory.mktemp("browser")
    database_url = f"sqlite+aiosqlite:///{directory / 'intake.db'}"
    port = free_port()
    env = {
        "BATON_LEAD_INTAKE_PORT": str(port),
        "BATON_LEAD_INTAKE_DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": DEAD_BROKER,
        "BATON_ADMIN_KEY": ADMIN_KEY,
    }
    process = ServiceProcess("lead_intake", port, env, directory / "lead_intake.log")
    process.start()
    try:
        await _wait_alive(process)
        await _register_form(process.url, site)
        running = Intake(url=process.url, form_key=await _create_form_key(database_url, site))
        for server in (site, other_site):
            server.values = {"intake": running.url, "form_key": running.form_key, "thanks_url": site.url("thanks.html")}
        yield running
    finally:
        process.stop()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; its absence is a failure, never a skip."""
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: run `make browser-deps` to install Debian's chromium"
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """Headless Chromium driven by Playwright, which manages a fresh profile for it."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, chromium_sandbox=False, headless=True, timeout=60_000
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A tab in a fresh browser context (no cookies or cache carried between tests)."""
    context = await browser.new_context()
    tab = await context.new_page()
    tab.set_default_timeout(10_000)
    try:
        yield tab
    finally:
        await context.close()
