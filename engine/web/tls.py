"""TLS for the engine's listeners: one server context with modern defaults, reloaded in place on SIGHUP, and
the binding of a device's client certificate to its device id (mTLS on ``/v1/scans``).

Why in the engine and not only in a proxy: a scan carries a person's name, birth date and document number, and
codes are static, so a captured code is a reusable check-in; a tracer's bearer token opens the movements of a
population. Plain HTTP off loopback is refused unless the operator says a TLS terminator sits in front
(``engine.web.listeners``).

*Reload without dropping connections.* The listening socket keeps one :class:`ssl.SSLContext` for its whole
life; :meth:`ServerTLS.reload` calls ``load_cert_chain`` on that same object again, so established connections
keep their session and every new handshake presents the new certificate. A bad new pair raises and the old one
stays in force (OpenSSL only replaces the chain once the key matches it).

*Client certificates.* With ``--tls-client-ca`` the handshake asks for a certificate and verifies it against
that CA (``CERT_OPTIONAL``: tracers and the operator CLI on the same listener present none). ``/v1/scans``
then requires one, and the device id in ``X-Device-Id`` must be the certificate's subject common name, or one of
its subjectAltName DNS names, or its URI ``urn:vnqr:device:<device id>``. The request signature is still
checked: the certificate proves the device holds its TLS key, the signature that it holds its registered
Ed25519 key; a stolen one alone is not enough. Revocation of a device stays ``device-revoke`` (the engine
checks no CRL; issue short-lived device certificates or revoke in the registry).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import AuthError, ConfigError
from engine.permissions import check_private

log = logging.getLogger(__name__)

#: TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only; TLS 1.3 suites are all modern and left as OpenSSL has them
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS:!RSAPSK:!PSK"
DEVICE_URI_PREFIX = "urn:vnqr:device:"


class ServerTLS:
    """The one server context of an engine's listeners, and how to reload its certificate."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
        ctx.options |= ssl.OP_SINGLE_ECDH_USE
        if client_ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(client_ca))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the device client CA {client_ca}: {exc}") from None
            ctx.verify_mode = ssl.CERT_OPTIONAL
        self.context = ctx
        self.reload()

    @classmethod
    def from_config(cls, config: Config) -> ServerTLS | None:
        if not config.tls:
            return None
        ca = config.tls_client_ca if str(config.tls_client_ca) not in ("", ".") else None
        return cls(config.tls_cert, config.tls_key, ca)

    @property
    def requires_client_certificates(self) -> bool:
        return self.client_ca is not None

    def reload(self) -> None:
        """Re-read the certificate chain and key into the same context (new handshakes use them)."""
        check_private(self.key, "TLS private key")
        try:
            self.context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate {self.cert} with key {self.key}: {exc}") from None
        log.info("TLS certificate loaded from %s", self.cert)


def certificate_names(peercert: dict[str, Any] | None) -> set[str]:
    """Device ids a verified client certificate speaks for: subject CN, SAN DNS names, ``urn:vnqr:device:`` URIs."""
    if not peercert:
        return set()
    names: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            names.add(str(value))
        elif kind == "URI" and str(value).startswith(DEVICE_URI_PREFIX):
            names.add(str(value)[len(DEVICE_URI_PREFIX) :])
    return names


def require_device_certificate(transport: Any, device_id: str) -> None:
    """401 unless the connection presented a CA-verified certificate issued for ``device_id``."""
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    names = certificate_names(peercert)
    if not names:
        raise AuthError("this engine requires a device client certificate (mTLS) on /v1/scans")
    if device_id not in names:
        raise AuthError("the client certificate was not issued for this device id")


def client_context(cafile: Path | None = None, *, pinned: Iterable[Path] = ()) -> ssl.SSLContext:
    """A client context for the engine's own callers (the CLI, the demo scanner, benches, tests).

    ``pinned`` certificates are trusted as they are (partial chain: a self-signed or leaf certificate counts as
    a trust anchor) and the host name is not checked: the CLI on the engine's host connects to 127.0.0.1, which
    the certificate rarely names, while only the holder of that exact certificate's key can complete the
    handshake.
    """
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    pins = [str(p) for p in pinned]
    if pins:
        ctx.check_hostname = False
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        for p in pins:
            ctx.load_verify_locations(cafile=p)
    return ctx
