"""Channel security: TLS (optionally mutual) for anything but loopback.

Plaintext is allowed only when both ends are on the loopback interface, unless the operator forces
it (``--insecure-allow-plaintext`` / ``insecure=True``): the identity signatures protect integrity
but not confidentiality of the protocol messages, and the aggregate is returned over this channel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import grpc

from secagg.errors import ConfigError

__all__ = ["TlsOptions", "channel_credentials", "is_loopback", "server_credentials", "split_host"]


def split_host(address: str) -> tuple[str, str]:
    """``host:port`` / ``[v6]:port`` -> (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest.lstrip(":")
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, ""
    return host, port


def is_loopback(address: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    host, _ = split_host(address)
    if host.startswith("unix:") or address.startswith("unix:"):
        return True
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TlsOptions:
    """Client-side TLS: the CA (or self-signed server certificate) to trust, and for mTLS a
    certificate chain and private key. PEM bytes."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ConfigError("mTLS needs both a certificate chain and its private key")


def channel_credentials(options: TlsOptions) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=options.root_certificates,
        private_key=options.private_key,
        certificate_chain=options.certificate_chain,
    )


def server_credentials(
    certificate_chain: bytes, private_key: bytes, client_ca: bytes | None = None
) -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca`` every client must present a certificate it
    signed (mTLS)."""
    return grpc.ssl_server_credentials(
        [(private_key, certificate_chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
