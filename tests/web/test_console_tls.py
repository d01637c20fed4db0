"""TLS on the daemon's own HTTP listener (`api.tls`, GBUI II-3 / VII-2 1a): the real gateway
on a loopback port with certificates generated at test time (trustme), real HTTPS requests,
plain HTTP refused on that port, the Secure session cookie, client certificates when required,
and bad TLS settings refused at load with file, line and field."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme

from middleware.config import ConfigError, load_settings_text
from middleware.gateway import Gateway
from simulators.lis import LisSimulator
from web.console_support import PASSWORD, add_user


def _config(tmp_path: Path, lis_port: int, tls: str) -> str:
    return (
        f"gateway: LABGATE\nstore:\n  url: sqlite:///{tmp_path / 'labgate.db'}\n"
        f"api:\n  host: 127.0.0.1\n  port: 0\n{tls}"
        f"lis:\n  port: {lis_port}\n"
    )


def _tls(pki: dict[str, str], extra: str = "") -> str:
    return f"  tls:\n    cert: {pki['server.pem']}\n    key: {pki['server.key']}\n{extra}"


@contextlib.asynccontextmanager
async def running(tmp_path: Path, tls: str) -> AsyncIterator[tuple[Gateway, int]]:
    lis = LisSimulator()
    lis_port = await lis.start()
    gateway = Gateway(load_settings_text(_config(tmp_path, lis_port, tls)))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    async with asyncio.timeout(10):
        await gateway.ready.wait()
    try:
        yield gateway, gateway.addresses["api"][1]
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
        await lis.close()


async def test_the_console_answers_https_and_its_cookie_is_secure(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    async with running(tmp_path, _tls(pki)) as (gateway, port):
        await gateway.store.run(add_user, gateway.store, "dr-martin", "biologist")
        base = f"https://127.0.0.1:{port}"
        trusted = ssl.create_default_context(cafile=pki["ca.pem"])
        async with httpx.AsyncClient(base_url=base, verify=trusted, timeout=10) as client:
            health = await client.get("/api/health")
            assert health.status_code == 200 and health.json()["gateway"] == "LABGATE"
            login = await client.post(
                "/api/session", json={"name": "dr-martin", "password": PASSWORD}
            )
            assert login.status_code == 200
            cookie = login.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
            me = await client.get("/api/session")  # the Secure cookie goes back over HTTPS
            assert me.status_code == 200 and me.json()["user"] == "dr-martin"
            client.cookies.clear()
            page = await client.get("/login")
            assert "secure" in page.headers["set-cookie"].lower()  # the login form's too


async def test_plain_http_and_an_untrusted_certificate_get_nothing(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    async with running(tmp_path, _tls(pki)) as (_, port):
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{port}/api/health")
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://127.0.0.1:{port}/api/health")  # system CAs only


async def test_old_tls_versions_are_refused(tmp_path: Path, pki: dict[str, str]) -> None:
    async with running(tmp_path, _tls(pki)) as (_, port):
        context = ssl.create_default_context(cafile=pki["ca.pem"])
        with warnings.catch_warnings():  # deprecated versions: what is being refused here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        # The client's own floor down too, so that the refusal can only be the server's.
        context.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.close()


async def test_a_client_certificate_is_required_when_the_lab_asks(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    extra = f"    ca: {pki['ca.pem']}\n    require_client_cert: true\n"
    async with running(tmp_path, _tls(pki, extra)) as (_, port):
        url = f"https://127.0.0.1:{port}/api/health"
        trusted = ssl.create_default_context(cafile=pki["ca.pem"])
        async with httpx.AsyncClient(verify=trusted, timeout=5) as anonymous:
            with pytest.raises(httpx.TransportError):
                await anonymous.get(url)
        context = ssl.create_default_context(cafile=pki["ca.pem"])
        context.load_cert_chain(pki["client.pem"], pki["client.key"])
        async with httpx.AsyncClient(verify=context, timeout=5) as known:
            assert (await known.get(url)).status_code == 200


def _problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_settings_text(text, "lab.yaml")
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_bad_tls_settings_are_refused_with_file_line_and_field(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    missing = _tls(pki).replace(pki["server.pem"], str(tmp_path / "nowhere.pem"))
    [(line, field, message)] = _problems(_config(tmp_path, 2575, missing))
    assert (line, field) == (8, "api.tls.cert") and "no such file" in message
    with pytest.raises(ConfigError, match=r"lab\.yaml:8: api\.tls\.cert: no such file"):
        load_settings_text(_config(tmp_path, 2575, missing), "lab.yaml")
    # A key that is not the certificate's is refused at load, not when the daemon starts.
    other = trustme.CA().issue_cert("127.0.0.1")
    wrong_key = tmp_path / "wrong.key"
    other.private_key_pem.write_to_path(str(wrong_key))
    mismatched = _tls(pki).replace(pki["server.key"], str(wrong_key))
    [(line, field, message)] = _problems(_config(tmp_path, 2575, mismatched))
    assert (line, field) == (7, "api.tls") and "do not load" in message
    no_cert = f"  tls:\n    ca: {pki['ca.pem']}\n"
    [(_, field, message)] = _problems(_config(tmp_path, 2575, no_cert))
    assert field == "api.tls" and "cert and key" in message
    hostname = _tls(pki, "    server_hostname: labgate.lab\n")
    [(_, field, message)] = _problems(_config(tmp_path, 2575, hostname))
    assert field == "api.tls" and "server_hostname" in message
    settings = load_settings_text(_config(tmp_path, 2575, _tls(pki)), "lab.yaml")
    assert settings.api.scheme == "https"
    assert load_settings_text(_config(tmp_path, 2575, ""), "lab.yaml").api.scheme == "http"


@pytest.mark.parametrize("client_cert", [False, True])
async def test_the_gateways_own_commands_see_the_daemon_behind_tls(
    tmp_path: Path, pki: dict[str, str], client_cert: bool
) -> None:
    """`labgate restore` must refuse while the daemon runs, and `status`/`doctor` find it,
    with `api.tls` as without (a handshake refused for want of a client certificate is still
    a daemon listening)."""
    from middleware.ops.doctor import _probe_api
    from middleware.ops.restore import daemon_answering

    extra = f"    ca: {pki['ca.pem']}\n    require_client_cert: true\n" if client_cert else ""
    async with running(tmp_path, _tls(pki, extra)) as (gateway, port):
        api = gateway.settings.api.model_copy(update={"port": port})
        assert api.local_url == f"https://127.0.0.1:{port}"
        assert await asyncio.to_thread(daemon_answering, api) == api.local_url
        kind, health = await asyncio.to_thread(_probe_api, api, 5.0)
        if not client_cert:
            assert kind == "labgate" and health is not None and health["gateway"] == "LABGATE"
    assert await asyncio.to_thread(daemon_answering, api) is None  # stopped: nothing there
