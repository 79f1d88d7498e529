"""TLS / mutual TLS on 127.0.0.1, health checking and reflection of a real ``secagg serve``."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import threading

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from secagg.client import AggregatorClient, AggregatorError, TlsOptions, load_identity
from tests.service.conftest import ServerProcess, site_client, write_config, write_keys

pytestmark = [pytest.mark.service, pytest.mark.timeout(90)]


def _cert(
    name: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_mutual_tls_round_health_and_reflection(tmp_path: pathlib.Path, servers):
    server_cert, server_key = _cert("secagg-aggregator", server=True, ca=True)
    client_ca = _cert("sites-ca", ca=True)
    client_cert, client_key = _cert("site", issuer=client_ca)
    (tmp_path / "server.crt").write_bytes(_pem(server_cert))
    (tmp_path / "server.key").write_bytes(_key_pem(server_key))
    (tmp_path / "clients-ca.crt").write_bytes(_pem(client_ca[0]))
    keys = write_keys(tmp_path, 3)
    tls = (
        '[tls]\ncertificate = "server.crt"\nprivate_key = "server.key"\n'
        'client_ca = "clients-ca.crt"'
    )
    config = write_config(tmp_path, keys, vector_length=1000, threshold=2)
    config.write_text(config.read_text() + tls + "\n")
    server = ServerProcess(config, tmp_path / "server.log")
    servers.append(server)
    assert any(e.get("mtls") for e in server.events() if e["event"] == "listening")

    options = TlsOptions(
        root_certificates=_pem(server_cert),
        certificate_chain=_pem(client_cert),
        private_key=_key_pem(client_key),
    )
    updates = {p: np.full(1000, 0.25 * p) for p in keys}
    results: dict[int, object] = {}

    def site(party: int) -> None:
        with site_client(server.target, keys[party], tls=options, timeout=30) as c:
            results[party] = c.participate(updates[party])

    threads = [threading.Thread(target=site, args=(p,)) for p in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [1, 2, 3]
    for result in results.values():
        assert result.survivors == (1, 2, 3)  # type: ignore[attr-defined]
        np.testing.assert_allclose(result.aggregate, 1.5, atol=3 * result.encoding.resolution)  # type: ignore[attr-defined]

    # Without a client certificate, or in plaintext, the TLS server refuses the connection.
    no_cert = TlsOptions(root_certificates=_pem(server_cert))
    with AggregatorClient(server.target, load_identity(keys[1]), tls=no_cert, timeout=5) as c:
        with pytest.raises(AggregatorError) as refused:
            c.list_rounds()
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    with AggregatorClient(server.target, load_identity(keys[1]), timeout=5) as c:
        with pytest.raises(AggregatorError) as plaintext:
            c.list_rounds()
        assert plaintext.value.code is grpc.StatusCode.UNAVAILABLE

    creds = grpc.ssl_channel_credentials(_pem(server_cert), _key_pem(client_key), _pem(client_cert))
    with grpc.secure_channel(server.target, creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "secagg.v1.Aggregator"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"secagg.v1.Aggregator", "grpc.health.v1.Health"} <= names
    assert server.terminate() == 0
    text = server.log_path.read_text()
    assert '"event":"stopped"' in text
