"""Download the signed policy: HTTPS only, capped, with ETag revalidation.

The fetcher only downloads (like python-tuf's fetcher): it never decides whether the
bytes are trustworthy — the policy store does, from the signature. Every failure is a
``FetchError`` whose message says what happened in words an admin can act on.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

__all__ = ["MAX_REDIRECTS", "FetchError", "FetchResult", "Fetcher"]

MAX_REDIRECTS = 5
MAX_ETAG_CHARS = 256


class FetchError(Exception):
    """The policy could not be downloaded; ``reason`` is one line for status and audit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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

    def fetch(self, etag: str | None = None) -> FetchResult:
        """GET the policy; ``etag`` makes it conditional (304 → ``body`` None)."""
        if not self.url.lower().startswith("https://"):
            raise FetchError(f"refusing to fetch the policy over plain HTTP: {self.url}")
        import requests  # noqa: PLC0415 - only agents with a policy_url pay for it

        headers = {"Accept": "application/json", "User-Agent": "pullgate-agent"}
        if etag:
            headers["If-None-Match"] = etag
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            # requests would raise a bare OSError from deep inside urllib3.
            raise FetchError(f"ca_bundle {self.ca_bundle} does not exist or is not a file")
        verify: str | bool = str(self.ca_bundle) if self.ca_bundle else True
        url = self.url
        # A server that trickles bytes resets the read timeout forever: bound it all,
        # redirects included.
        deadline = time.monotonic() + self.connect_timeout + 2 * self.read_timeout
        try:
            with requests.Session() as session:
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
                        return self._read(url, response, etag, deadline)
                raise FetchError(f"more than {MAX_REDIRECTS} redirects from {self.url}")
        except requests.exceptions.SSLError as e:
            raise FetchError(f"TLS verification of {url} failed: {_tls_reason(e)}") from e
        except requests.exceptions.ConnectTimeout as e:
            raise FetchError(f"connecting to {url} timed out") from e
        except (requests.exceptions.ReadTimeout, requests.exceptions.Timeout) as e:
            raise FetchError(f"the policy server stalled past the read timeout ({url})") from e
        except requests.exceptions.ConnectionError as e:
            if "timed out" in str(e).lower():
                raise FetchError(f"the policy server stalled past the read timeout ({url})") from e
            raise FetchError(f"cannot connect to {url}: {_short(e)}") from e
        except requests.exceptions.RequestException as e:
            raise FetchError(f"fetching {url} failed: {_short(e)}") from e
        except OSError as e:  # e.g. a ca_bundle that is not PEM, or vanished meanwhile
            raise FetchError(f"fetching {url} failed: {_short(e)}") from e
        except ValueError as e:  # e.g. requests parses a Location even when not following it
            raise FetchError(f"fetching {url} failed: {type(e).__name__}: {_short(e)}") from e

    def _next_hop(self, url: str, location: str | None) -> str:
        if not location:
            raise FetchError(f"{url} answered a redirect without a Location")
        try:
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme
        except ValueError as e:  # e.g. "Invalid IPv6 URL"
            raise FetchError(f"{url} redirected to an unreadable Location: {_short(e)}") from e
        if scheme != "https":
            raise FetchError(
                f"refusing a redirect from {url} to {target}: the policy is fetched over HTTPS only"
            )
        return target

    def _read(self, url: str, response: Any, etag: str | None, deadline: float) -> FetchResult:
        if response.status_code == 304:
            return FetchResult(None, etag)
        if response.status_code != 200:
            raise FetchError(f"policy server answered HTTP {response.status_code} for {url}")
        declared = response.headers.get("Content-Length") or ""
        # ASCII digits only, and few of them: int() of '²' or of 5,000 digits raises.
        digits = declared.isascii() and declared.isdigit()
        if digits and (len(declared) > 18 or int(declared) > self.max_bytes):
            raise FetchError(
                f"policy is {_short_number(declared)} bytes, more than the limit of "
                f"{self.max_bytes}"
            )
        body = bytearray()
        for chunk in response.iter_content(chunk_size=65536):
            body += chunk
            if time.monotonic() > deadline:
                raise FetchError(f"the policy server is too slow ({url})")
            if len(body) > self.max_bytes:
                raise FetchError(f"policy is larger than the limit of {self.max_bytes} bytes")
        return FetchResult(bytes(body), _usable_etag(response.headers.get("ETag")))


def _short_number(digits: str) -> str:
    return digits if len(digits) <= 20 else f"{digits[:8]}... ({len(digits)} digits)"


def _usable_etag(value: str | None) -> str | None:
    """An ETag worth keeping: short printable ASCII. It is stored in the policy state and
    sent back, so a hostile server must not be able to bloat or break either."""
    if value is None or len(value) > MAX_ETAG_CHARS:
        return None
    if not value.isascii() or not value.isprintable():
        return None
    return value


def _tls_reason(error: Exception) -> str:
    """The part of an OpenSSL error an admin can act on (name mismatch, unknown CA)."""
    text = str(error)
    m = re.search(r"certificate verify failed: ([^()\"']+)", text)
    return m.group(1).strip() if m else _short(error)


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:197] + "..."
