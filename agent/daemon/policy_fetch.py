"""Download the signed policy: HTTPS only, capped, with ETag revalidation.

The fetcher only downloads (like python-tuf's fetcher): it never decides whether the
bytes are trustworthy — the policy store does, from the signature. Every failure is a
``FetchError`` whose message says what happened in words an admin can act on.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from agent.core.text import printable

__all__ = ["MAX_REDIRECTS", "FetchError", "FetchResult", "Fetcher", "usable_etag"]

MAX_REDIRECTS = 5
MAX_ETAG_CHARS = 256


class FetchError(Exception):
    """The policy could not be downloaded; ``reason`` is one line for status and audit."""

    def __init__(self, reason: str, *, network: bool = False) -> None:
        reason = printable(reason)  # a Location or a TLS message is the server's text
        super().__init__(reason)
        self.reason = reason
        # True: the server could not be reached or did not answer in time. False: it
        # answered something unusable, or the request itself could not be made.
        self.network = network


@dataclass(frozen=True)
class FetchResult:
    body: bytes | None  # None: not modified since ``etag``
    etag: str | None


@dataclass(frozen=True)
class Fetcher:
    url: str
    ca_bundle: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_bytes: int = 1 << 20
    what: str = "policy"
    """What is fetched, in the error messages: the identity provider's keys use this too."""
    same_host: bool = False
    """Follow redirects only on the same host and port. The policy may move anywhere (its
    signature decides), but the identity provider's keys are trusted for where they come
    from: an open redirect at the provider must not serve someone else's keys."""

    @property
    def deadline_seconds(self) -> float:
        """The most one fetch may take, all of it: connects, TLS, headers, body, redirects."""
        return self.connect_timeout + 2 * self.read_timeout

    def fetch(self, etag: str | None = None) -> FetchResult:
        """GET the policy; ``etag`` makes it conditional (304 → ``body`` None)."""
        if not self.url.lower().startswith("https://"):
            raise FetchError(f"refusing to fetch the {self.what} over plain HTTP: {self.url}")
        import requests  # noqa: PLC0415 - only agents with a policy_url pay for it

        headers = {"Accept": "application/json", "User-Agent": "pullgate-agent"}
        etag = usable_etag(etag)  # an edited state file must not break every request
        if etag:
            headers["If-None-Match"] = etag
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            # requests would raise a bare OSError from deep inside urllib3.
            raise FetchError(f"ca_bundle {self.ca_bundle} does not exist or is not a file")
        verify: str | bool = str(self.ca_bundle) if self.ca_bundle else True
        url = self.url
        # A server that trickles bytes (one just inside the read timeout) resets the read
        # timeout forever, in the headers as in the body. One deadline bounds it all: when
        # it passes, a timer shuts down every socket this fetch opened, which ends any
        # read blocked on it, wherever it is.
        deadline = time.monotonic() + self.deadline_seconds
        sockets = _Sockets()
        timer = threading.Timer(self.deadline_seconds, sockets.shutdown)
        timer.daemon = True
        timer.start()
        try:
            with requests.Session() as session:
                session.mount("https://", _tracking_adapter(sockets))
                # Redirects are followed here, one hop at a time, so that none leaves
                # HTTPS. Another host is fine: the signature, not the server, decides.
                for _ in range(MAX_REDIRECTS + 1):
                    response = session.get(
                        url,
                        headers=headers,
                        timeout=(self.connect_timeout, self.read_timeout),
                        verify=verify,
                        stream=True,
                        allow_redirects=False,
                    )
                    with response:
                        if response.is_redirect:
                            url = self._next_hop(url, response.headers.get("Location"))
                            continue
                        return self._read(url, response, etag, deadline, sockets)
                raise FetchError(f"more than {MAX_REDIRECTS} redirects from {self.url}")
        except FetchError:
            if sockets.expired:
                raise self._too_slow(url) from None
            raise
        except Exception as e:
            if sockets.expired:
                raise self._too_slow(url) from e
            raise self._translate(url, e, requests) from e
        finally:
            timer.cancel()
            sockets.close()

    def _too_slow(self, url: str) -> FetchError:
        return FetchError(
            f"the {self.what} server did not deliver the {self.what} within the fetch "
            f"deadline of "
            f"{self.deadline_seconds:g}s ({url})",
            network=True,
        )

    def _translate(self, url: str, e: Exception, requests: Any) -> FetchError:
        if isinstance(e, requests.exceptions.SSLError):
            return FetchError(f"TLS verification of {url} failed: {_tls_reason(e)}", network=True)
        if isinstance(e, requests.exceptions.ConnectTimeout):
            return FetchError(f"connecting to {url} timed out", network=True)
        stalled = f"the {self.what} server stalled past the read timeout ({url})"
        if isinstance(e, requests.exceptions.ReadTimeout | requests.exceptions.Timeout):
            return FetchError(stalled, network=True)
        if isinstance(e, requests.exceptions.ConnectionError):
            if "timed out" in str(e).lower():
                return FetchError(stalled, network=True)
            return FetchError(f"cannot connect to {url}: {_short(e)}", network=True)
        if isinstance(e, requests.exceptions.RequestException):
            return FetchError(f"fetching {url} failed: {_short(e)}")
        if isinstance(e, OSError):  # e.g. a ca_bundle that is not PEM, or vanished meanwhile
            return FetchError(f"fetching {url} failed: {_short(e)}")
        if isinstance(e, ValueError):  # e.g. requests parses a Location even when not following
            return FetchError(f"fetching {url} failed: {type(e).__name__}: {_short(e)}")
        raise e

    def _next_hop(self, url: str, location: str | None) -> str:
        if not location:
            raise FetchError(f"{url} answered a redirect without a Location")
        try:
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme
        except ValueError as e:  # e.g. "Invalid IPv6 URL"
            raise FetchError(f"{url} redirected to an unreadable Location: {_short(e)}") from e
        if self.same_host and urlsplit(target).netloc != urlsplit(url).netloc:
            raise FetchError(
                f"refusing a redirect from {url} to another host ({target}): the {self.what} "
                "is fetched from its own host only"
            )
        if scheme != "https":
            raise FetchError(
                f"refusing a redirect from {url} to {target}: the {self.what} is fetched over "
                "HTTPS only"
            )
        return target

    def _read(
        self, url: str, response: Any, etag: str | None, deadline: float, sockets: _Sockets
    ) -> FetchResult:
        if response.status_code == 304:
            return FetchResult(None, etag)
        if response.status_code != 200:
            raise FetchError(f"{self.what} server answered HTTP {response.status_code} for {url}")
        declared = response.headers.get("Content-Length") or ""
        # ASCII digits only, and few of them: int() of '²' or of 5,000 digits raises.
        digits = declared.isascii() and declared.isdigit()
        if digits and (len(declared) > 18 or int(declared) > self.max_bytes):
            raise FetchError(
                f"{self.what} is {_short_number(declared)} bytes, more than the limit of "
                f"{self.max_bytes}"
            )
        body = bytearray()
        # Small reads, and the deadline checked after each (the timer is the hard stop).
        for chunk in response.iter_content(chunk_size=4096):
            body += chunk
            if time.monotonic() > deadline or sockets.expired:
                raise self._too_slow(url)
            if len(body) > self.max_bytes:
                raise FetchError(f"{self.what} is larger than the limit of {self.max_bytes} bytes")
        return FetchResult(bytes(body), usable_etag(response.headers.get("ETag")))


def _short_number(digits: str) -> str:
    return digits if len(digits) <= 20 else f"{digits[:8]}... ({len(digits)} digits)"


def usable_etag(value: object) -> str | None:
    """An ETag worth keeping and sending: short printable ASCII with no whitespace at
    either end (``requests`` refuses a header value with leading whitespace, CR or LF).
    It is stored in the policy state and sent back, so a hostile server or an edited
    state file must not be able to bloat or break either."""
    if not isinstance(value, str) or not value or len(value) > MAX_ETAG_CHARS:
        return None
    if not value.isascii() or not value.isprintable() or value != value.strip():
        return None
    return value


class _Sockets:
    """The sockets of one fetch, as duplicates this fetch owns: shutting one down ends a
    read blocked on the original, and a closed original's number is never reused here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False

    def add(self, sock: socket.socket) -> None:
        duplicate = sock.dup()
        with self._lock:
            if not self.expired:
                self._sockets.append(duplicate)
                return
        _shutdown(duplicate)  # opened after the deadline: end it at once
        duplicate.close()

    def shutdown(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side
        sock.shutdown(socket.SHUT_RDWR)


def _tracking_adapter(sockets: _Sockets) -> Any:
    """A requests adapter whose HTTPS connections register their sockets in ``sockets``."""
    from requests.adapters import HTTPAdapter  # noqa: PLC0415 - with requests, above
    from urllib3.connection import HTTPSConnection  # noqa: PLC0415
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool  # noqa: PLC0415

    class Connection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            sockets.add(sock)
            return sock

    class Pool(HTTPSConnectionPool):
        ConnectionCls = Connection

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                "http": HTTPConnectionPool,
                "https": Pool,
            }

    return Adapter()


def _tls_reason(error: Exception) -> str:
    """The part of an OpenSSL error an admin can act on (name mismatch, unknown CA)."""
    text = str(error)
    m = re.search(r"certificate verify failed: ([^()\"']+)", text)
    return m.group(1).strip() if m else _short(error)


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:197] + "..."
