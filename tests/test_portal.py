"""The web portal (RFC 8903 §3.1.5/§3.1.6) in headless Chromium against a real ``dots server``.

A user logs in over HTTPS, requests a mitigation, sees its status become
attack-mitigation-in-progress (pushed by Server-Sent Events from the DOTS client's Observe),
withdraws it and sees dots-client-withdrawn-mitigation.  Screenshots at desktop (1280x800)
and phone (390x844) sizes go to ``build/screenshots/`` (git-ignored); the committed copies in
``docs/screenshots/`` are refreshed only on purpose, with ``DOTS_UPDATE_SCREENSHOTS=1``.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium``; the driver
path is given explicitly (no Selenium Manager downloads).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.client import DotsClient
from agent.pki import issue_server
from agent.portal import Portal, hash_password, load_users, verify_password
from agent.transports.credentials import Credentials
from tests.servers import ServerProcess

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[1]
BUILD_SHOTS = ROOT / "build" / "screenshots"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"

try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:  # pragma: no cover
    HAVE_SELENIUM = False


def skip_reason() -> str | None:
    if not HAVE_SELENIUM:
        return "selenium not installed (pip install selenium)"
    if not CHROMIUM or not Path(CHROMEDRIVER).exists():
        return "chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    sp = ServerProcess(tmp_path_factory.mktemp("portal-server")).start()
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture
async def portal(server: ServerProcess, tmp_path: Path) -> AsyncIterator[Portal]:
    cert, key = issue_server(server.pki, "portal", ("localhost", "127.0.0.1"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    users = load_users({"users": [
        {"name": "alice", "password": hash_password(PASSWORD), "prefixes": ["198.51.100.0/24", "2001:db8:64::/48"]},
        {"name": "bob", "password": hash_password("bob's password"), "prefixes": ["203.0.113.0/24"]}]})
    client = DotsClient(("127.0.0.1", server.port_of("tls")), Credentials.from_pki_dir(server.pki, "client"), "tls",
                        state=tmp_path / "client-state.json", request_timeout=15)
    async with client:
        async with Portal(client, users, tmp_path / "portal", ssl_context=ctx,
                          title="Example ISP · DDoS protection") as p:
            yield p


def test_password_hashes() -> None:
    h = hash_password("pw")
    assert h.startswith("scrypt$") and verify_password("pw", h) and not verify_password("PW", h)
    assert not verify_password("pw", "md5$x") and not verify_password("pw", "garbage")


async def http(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    hdrs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{hdrs}\r\n".encode() + body)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    h = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    data = await reader.readexactly(int(h.get("content-length", 0)))
    writer.close()
    return int(lines[0].split()[1]), h, data


async def test_api_authorisation(portal: Portal) -> None:
    port = portal.port
    assert (await http(port, "GET", "/"))[1]["location"] == "/login"
    assert (await http(port, "GET", "/api/mitigations"))[0] == 401
    status, _, _ = await http(port, "POST", "/login", b"username=alice&password=nope",
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401
    status, h, _ = await http(port, "POST", "/login", f"username=bob&password={'bob%27s+password'}".encode(),
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and "HttpOnly" in h["set-cookie"] and "Secure" in h["set-cookie"]
    cookie = h["set-cookie"].split(";")[0]
    session = next(iter(portal.sessions.values()))
    body = json.dumps({"target-prefix": ["198.51.100.1"]}).encode()
    assert (await http(port, "POST", "/api/mitigations", body, {"Cookie": cookie}))[0] == 403  # no CSRF token
    status, _, data = await http(port, "POST", "/api/mitigations", body, {"Cookie": cookie,
                                                                          "X-CSRF-Token": session.csrf})
    assert status == 403 and b"not among your protected prefixes" in data  # alice's prefix, not bob's
    assert (await http(port, "GET", "/static/../server.py"))[0] == 404


def _driver(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,800", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.accept_insecure_certs = True  # the portal's certificate comes from the test CA
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def _viewport(driver: Any, width: int, height: int, mobile: bool) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def _shot(driver: Any, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.png"
    driver.save_screenshot(str(out))
    targets = [BUILD_SHOTS] + ([DOCS_SHOTS] if os.environ.get("DOTS_UPDATE_SCREENSHOTS") == "1" else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, folder / out.name)


def browse(url: str, tmp_path: Path) -> None:
    """The user's session in Chromium (blocking; runs in a thread while the loop serves)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    d = _driver(tmp_path)
    try:
        wait = WebDriverWait(d, 20)
        _viewport(d, 1280, 800, False)
        d.get(url + "/")
        wait.until(ec.presence_of_element_located((By.ID, "username")))
        _shot(d, tmp_path, "portal-login-desktop")
        d.find_element(By.ID, "username").send_keys("alice")
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "request")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))

        d.find_element(By.ID, "prefix").send_keys("198.51.100.10/32, 2001:db8:64::10")
        d.find_element(By.ID, "ports").send_keys("80, 443")
        d.find_element(By.CSS_SELECTOR, 'input[name="proto"][value="6"]').click()
        Select(d.find_element(By.ID, "lifetime")).select_by_value("3600")
        d.find_element(By.ID, "submit").click()
        status = (By.CSS_SELECTOR, "#mitigations .mitigation .status")
        wait.until(ec.presence_of_element_located(status))
        wait.until(lambda drv: drv.find_element(*status).get_attribute("data-status")
                   == "attack-mitigation-in-progress")
        assert "Mitigation in progress" in d.find_element(*status).text
        assert "198.51.100.10/32" in d.find_element(By.CSS_SELECTOR, ".mitigation .targets").text
        left = d.find_element(By.CSS_SELECTOR, ".mitigation .v-left").text
        assert left.startswith(("59m", "1h")), left
        d.find_element(By.CSS_SELECTOR, ".mitigation .efficacy-under").click()  # efficacy update
        wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "Efficacy update sent"))
        d.find_element(By.ID, "message").click()
        _shot(d, tmp_path, "portal-desktop")
        _viewport(d, 390, 844, True)
        d.execute_script("window.scrollTo(0, 0)")
        _shot(d, tmp_path, "portal-phone")
        d.execute_script("document.getElementById('mitigations').scrollIntoView()")
        _shot(d, tmp_path, "portal-phone-status")
        _viewport(d, 1280, 800, False)

        d.find_element(By.CSS_SELECTOR, ".mitigation .withdraw").click()
        wait.until(lambda drv: drv.find_element(*status).get_attribute("data-status")
                   in ("dots-client-withdrawn-mitigation", "gone"))
        assert d.find_element(*status).get_attribute("data-status") == "dots-client-withdrawn-mitigation"
        _shot(d, tmp_path, "portal-withdrawn-desktop")
        # no page reload happened: the page's request form still holds what was typed
        assert d.find_element(By.ID, "ports").get_attribute("value") == "80, 443"
    finally:
        d.quit()


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
async def test_portal_in_chromium(portal: Portal, tmp_path: Path) -> None:
    await asyncio.to_thread(browse, f"https://127.0.0.1:{portal.port}", tmp_path)
    # what the DOTS server says about it
    [mid] = list(portal.owners)
    assert portal.owners[mid] == "alice"
    scopes = await portal.client.status(mid)
    assert scopes[0]["status"] in ("dots-client-withdrawn-mitigation", "attack-mitigation-terminated")
    for name in ("portal-desktop", "portal-phone", "portal-withdrawn-desktop", "portal-login-desktop"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
