"""A real HTTPS server on 127.0.0.1 that publishes policy envelopes, for the agent's fetcher.

`TLSMaterial.create(directory)` makes, with `cryptography`, a private CA (its certificate is
the agent's `ca_bundle`), a server certificate for 127.0.0.1 (IP SAN) and a "wrong" one signed
by the same CA whose SAN names another host, so a certificate that does not match the URL
can be tested apart from an unknown CA.

`PolicyServer(tls)` (a context manager) serves with `http.server.ThreadingHTTPServer` in a
thread. Each path answers with a programmable `Route`: bytes with an ETag (honouring
`If-None-Match` with 304), any status (404, 500), a stall before the answer (bounded, and cut
short by `stop()`), a body sent without Content-Length (to test a streaming size cap).
Requests are counted per path. `use_certificate("wrong")` switches the certificate for
new connections on the same port.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["MAX_STALL", "PolicyServer", "Route", "TLSMaterial"]

MAX_STALL = 30.0
"""No route stalls longer than this, whatever it asks for."""
HANDSHAKE_TIMEOUT = 10.0

CertificateName = Literal["good", "wrong"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class TLSMaterial:
    """PEM files: the CA (for `ca_bundle`) and two server certificates with their keys."""

    ca_cert: Path
    good_cert: Path
    good_key: Path
    wrong_cert: Path
    wrong_key: Path

    @classmethod
    def create(cls, directory: Path) -> TLSMaterial:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Pullgate test policy CA"))
            .issuer_name(_name("Pullgate test policy CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(common_name: str, names: list[x509.GeneralName]) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(_name(common_name))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
                .sign(ca_key, hashes.SHA256())
            )
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            return cert.public_bytes(serialization.Encoding.PEM), key_pem

        material = cls(
            ca_cert=directory / "ca.pem",
            good_cert=directory / "server.pem",
            good_key=directory / "server.key",
            wrong_cert=directory / "wrong.pem",
            wrong_key=directory / "wrong.key",
        )
        material.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        good = leaf("127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        wrong = leaf("policy.other.example", [x509.DNSName("policy.other.example")])
        for (cert_pem, key_pem), cert_path, key_path in (
            (good, material.good_cert, material.good_key),
            (wrong, material.wrong_cert, material.wrong_key),
        ):
            cert_path.write_bytes(cert_pem)
            key_path.write_bytes(key_pem)
            key_path.chmod(0o600)
        return material

    def server_context(self, which: CertificateName) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if which == "good":
            context.load_cert_chain(self.good_cert, self.good_key)
        else:
            context.load_cert_chain(self.wrong_cert, self.wrong_key)
        return context


@dataclass(frozen=True)
class Route:
    """What one path answers."""

    body: bytes = b""
    status: int = 200
    etag: str | None = None
    """Sent with a 200; a request with a matching If-None-Match gets 304."""
    stall: float = 0.0
    """Seconds to wait before answering (at most MAX_STALL; `stop()` cuts it short)."""
    content_length: bool = True
    """False: no Content-Length, the body ends when the connection closes."""
    location: str | None = None
    """Sent as the Location header (with a 3xx `status`, a redirect)."""
    headers: tuple[tuple[str, str], ...] = ()
    """More headers, sent as given (e.g. a hostile Content-Length with `content_length`
    False)."""
    trickle: float = 0.0
    """Seconds between single bytes (0: no trickle): a server that never stalls for a whole
    read timeout, yet never finishes."""
    trickle_headers: bool = True
    """With `trickle`: trickle from the status line on; False: headers at once, then the
    body byte by byte."""

    @classmethod
    def envelope(cls, data: bytes) -> Route:
        """`data` with a strong ETag derived from it, as a static host would serve it."""
        return cls(body=data, etag=f'"{hashlib.sha256(data).hexdigest()[:16]}"')


@dataclass
class _State:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    not_modified: Counter[str] = field(default_factory=Counter)
    conditional: Counter[str] = field(default_factory=Counter)
    tls_failures: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at stop()

    def do_GET(self) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        with state.lock:
            state.requests[path] += 1
            if self.headers.get("If-None-Match") is not None:
                state.conditional[path] += 1
            route = state.routes.get(path)
        if route is None:
            route = Route(status=404, body=b"not found\n")
        if route.stall > 0:
            state.stopping.wait(min(route.stall, MAX_STALL))
            if state.stopping.is_set():
                return
        if (
            route.status == 200
            and route.etag is not None
            and self.headers.get("If-None-Match") == route.etag
        ):
            with state.lock:
                state.not_modified[path] += 1
            self.send_response(304)
            self.send_header("ETag", route.etag)
            self.end_headers()
            return
        if route.trickle > 0:
            self._trickle(route)
            return
        self.send_response(route.status)
        self.send_header("Content-Type", "application/json")
        if route.location is not None:
            self.send_header("Location", route.location)
        for name, value in route.headers:
            self.send_header(name, value)
        if route.etag is not None and route.status == 200:
            self.send_header("ETag", route.etag)
        if route.content_length:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        self.wfile.write(route.body)

    def _trickle(self, route: Route) -> None:
        head = (
            f"HTTP/1.0 {route.status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(route.body)}\r\n\r\n"
        ).encode()
        slow = head + route.body
        if not route.trickle_headers:
            self.wfile.write(head)
            self.wfile.flush()
            slow = route.body
        stopping = self.server.state.stopping
        for i in range(len(slow)):
            if stopping.wait(route.trickle):
                return
            try:
                self.wfile.write(slow[i : i + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up: what the test wants

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the counters say what was asked."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State
    context: ssl.SSLContext | None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # The TLS handshake runs in the handler thread (on first read), so a client that
        # never finishes it cannot hold up the accept loop.
        sock, address = self.socket.accept()
        sock.settimeout(HANDSHAKE_TIMEOUT)
        with self.state.lock:
            context = self.context
        if context is None:  # plain HTTP
            return sock, address
        wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client refusing our certificate aborts the handshake: expected, and counted.
        error = sys.exc_info()[1]
        with self.state.lock:
            if isinstance(error, ssl.SSLError):
                self.state.tls_failures += 1
            else:
                self.state.errors.append(repr(error))


class PolicyServer:
    """HTTPS on 127.0.0.1 (a free port) serving programmable routes; a context manager.

    With `tls=None` it serves plain HTTP (to test that the agent never fetches over it).
    """

    def __init__(self, tls: TLSMaterial | None, certificate: CertificateName = "good") -> None:
        self.tls = tls
        self._state = _State()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self._state
        self._server.context = tls.server_context(certificate) if tls is not None else None
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"policy-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/policy.dsse.json") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def set(self, path: str, route: Route) -> None:
        with self._state.lock:
            self._state.routes[path] = route

    def publish(self, data: bytes, path: str = "/policy.dsse.json") -> Route:
        """Serve `data` at `path` with an ETag, as a static host would; the route."""
        route = Route.envelope(data)
        self.set(path, route)
        return route

    def use_certificate(self, which: CertificateName) -> None:
        """Present the good or the wrong certificate on new connections."""
        assert self.tls is not None, "a plain HTTP server has no certificate"
        context = self.tls.server_context(which)
        with self._state.lock:
            self._server.context = context

    def requests(self, path: str = "/policy.dsse.json") -> int:
        with self._state.lock:
            return self._state.requests[path]

    def not_modified(self, path: str = "/policy.dsse.json") -> int:
        """How many requests to `path` were answered 304."""
        with self._state.lock:
            return self._state.not_modified[path]

    def conditional_requests(self, path: str = "/policy.dsse.json") -> int:
        """How many requests to `path` carried If-None-Match."""
        with self._state.lock:
            return self._state.conditional[path]

    @property
    def tls_failures(self) -> int:
        """Connections whose TLS handshake failed (a client refusing the certificate)."""
        with self._state.lock:
            return self._state.tls_failures

    @property
    def errors(self) -> list[str]:
        """Other exceptions raised while handling a request (e.g. a client hanging up)."""
        with self._state.lock:
            return list(self._state.errors)

    def stop(self) -> None:
        """Release stalled handlers, stop accepting, close the socket; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the policy server thread did not stop"
