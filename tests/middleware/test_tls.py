"""TLS contexts built from the configuration, exercised over a real loopback socket with
certificates generated at test time (trustme)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from middleware.config.settings import TlsSettings
from middleware.io.tls import client_context, server_context


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("analyser-1.lab")
    files = {
        "ca": tmp_path / "ca.pem",
        "server": tmp_path / "server.pem",
        "server_key": tmp_path / "server.key",
        "client": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return {name: str(path) for name, path in files.items()}


async def _exchange(server_tls: TlsSettings, client_tls: TlsSettings) -> bytes:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readexactly(5))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context(server_tls))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(client_tls), server_hostname="127.0.0.1"
        )
        writer.write(b"hello")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(5), 5)
        writer.close()
        return data
    finally:
        server.close()


async def test_server_verified_by_the_client(pki: dict[str, str]) -> None:
    server = TlsSettings(cert=pki["server"], key=pki["server_key"])
    assert await _exchange(server, TlsSettings(ca=pki["ca"])) == b"hello"


async def test_client_refuses_a_server_it_cannot_verify(
    pki: dict[str, str], tmp_path: Path
) -> None:
    other = trustme.CA()
    other_ca = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(other_ca))
    server = TlsSettings(cert=pki["server"], key=pki["server_key"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _exchange(server, TlsSettings(ca=str(other_ca)))


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: dict[str, str]) -> None:
    server = TlsSettings(
        cert=pki["server"], key=pki["server_key"], ca=pki["ca"], require_client_cert=True
    )
    with_cert = TlsSettings(ca=pki["ca"], cert=pki["client"], key=pki["client_key"])
    assert await _exchange(server, with_cert) == b"hello"
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        data = await _exchange(server, TlsSettings(ca=pki["ca"]))
        if not data:
            raise ConnectionError("closed by the server")


def test_tls_settings_are_checked(pki: dict[str, str]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="cert and key go together"):
        TlsSettings(cert=pki["server"])
    with pytest.raises(ValidationError, match="needs the ca"):
        TlsSettings(cert=pki["server"], key=pki["server_key"], require_client_cert=True)
    with pytest.raises(ValidationError, match="no such file"):
        TlsSettings(ca="/nonexistent/ca.pem")
