"""HTTPS: ``[server] tls_cert_file`` / ``tls_key_file``, and client certificates with
``tls_client_ca_file``.  Certificates are made here with ``cryptography`` (a CA, a server
certificate for 127.0.0.1, a client certificate, and a stranger CA), so the tests need
nothing from the machine."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stemedb.client import Client, ConnectionFailed, tls_context
from tests._server import ServerProcess, run_serve

VALID_DAYS = 2


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _ca(dirpath: Path, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = dirpath / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _leaf(dirpath: Path, cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          *, server: bool) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                              critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = dirpath / f"{cn}.crt", dirpath / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


class Pki:
    def __init__(self, d: Path) -> None:
        self.dir = d
        ca, ca_key, self.ca = _ca(d, "stemedb-test-ca")
        self.server_cert, self.server_key = _leaf(d, "server", ca, ca_key, server=True)
        self.client_cert, self.client_key = _leaf(d, "replica", ca, ca_key, server=False)
        stranger, stranger_key, self.stranger_ca = _ca(d, "stranger-ca")
        self.stranger_cert, self.stranger_key = _leaf(d, "stranger", stranger, stranger_key,
                                                      server=False)

    def env(self, *, client_ca: bool = False) -> dict[str, str]:
        env = {"STEMEDB_SERVER_TLS_CERT_FILE": str(self.server_cert),
               "STEMEDB_SERVER_TLS_KEY_FILE": str(self.server_key)}
        if client_ca:
            env["STEMEDB_SERVER_TLS_CLIENT_CA_FILE"] = str(self.ca)
        return env


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki
                 ) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("tls"), env=pki.env(),
                       tls=tls_context(str(pki.ca))) as s:
        s.start()
        yield s


def test_https_serves_reads_and_writes_to_a_client_that_trusts_the_ca(
        https_server: ServerProcess, pki: Pki) -> None:
    assert https_server.url.startswith("https://")
    with Client(https_server.url, tls=tls_context(str(pki.ca))) as db:
        created = db.create_assertion(subject="s", predicate="p", object={"tls": True},
                                      author="a")
        assert db.get_assertion(created.id).object == {"tls": True}
    assert "listening on https://" in https_server.log()


def test_plain_http_to_the_https_port_gets_no_answer(https_server: ServerProcess) -> None:
    plain = https_server.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/healthz", timeout=5)


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(
        https_server: ServerProcess, pki: Pki) -> None:
    with Client(https_server.url, tls=tls_context(str(pki.stranger_ca)),
                retries_max=0) as db, pytest.raises(ConnectionFailed) as err:
        db.current_epoch()
    assert "certificate verify failed" in str(err.value).lower()


def test_client_certificates_are_required_with_a_client_ca(
        tmp_path: Path, pki: Pki) -> None:
    good = tls_context(str(pki.ca), cert_file=str(pki.client_cert),
                       key_file=str(pki.client_key))
    with ServerProcess(tmp_path, env=pki.env(client_ca=True), tls=good) as server:
        server.start()
        with Client(server.url, tls=good) as db:
            assert db.ready()["ready"] is True
        for ctx in (tls_context(str(pki.ca)),  # no certificate at all
                    tls_context(str(pki.ca), cert_file=str(pki.stranger_cert),
                                key_file=str(pki.stranger_key))):  # signed by a stranger
            with httpx.Client(verify=ctx, timeout=5) as c, pytest.raises(
                    (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError,
                     ssl.SSLError)):
                c.get(server.url + "/healthz").raise_for_status()


@pytest.mark.parametrize("env, says", [
    ({"STEMEDB_SERVER_TLS_CERT_FILE": "{server_cert}"}, "go together"),
    ({"STEMEDB_SERVER_TLS_CERT_FILE": "{server_cert}",
      "STEMEDB_SERVER_TLS_KEY_FILE": "{missing}"}, "cannot load server.tls_cert_file"),
    ({"STEMEDB_SERVER_TLS_CERT_FILE": "{server_cert}",
      "STEMEDB_SERVER_TLS_KEY_FILE": "{client_key}"}, "cannot load server.tls_cert_file"),
    ({"STEMEDB_SERVER_TLS_CLIENT_CA_FILE": "{ca}"}, "needs server.tls_cert_file"),
], ids=["cert_without_key", "missing_key", "key_of_another_certificate",
        "client_ca_without_tls"])
def test_a_bad_tls_configuration_refuses_to_start(tmp_path: Path, pki: Pki,
                                                  env: dict[str, str], says: str) -> None:
    files = {"server_cert": pki.server_cert, "client_key": pki.client_key, "ca": pki.ca,
             "missing": tmp_path / "nope.key"}
    proc = run_serve(tmp_path, ["--listen", "127.0.0.1:0"],
                     env={k: v.format(**files) for k, v in env.items()})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stdout + proc.stderr
