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

__all__ = ["FetchError", "FetchResult", "Fetcher"]


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
        if not self.url.startswith("https://"):
            raise FetchError(f"refusing to fetch the policy over plain HTTP: {self.url}")
        import requests  # noqa: PLC0415 - only agents with a policy_url pay for it

        headers = {"Accept": "application/json", "User-Agent": "pullgate-agent"}
        if etag:
            headers["If-None-Match"] = etag
        verify: str | bool = str(self.ca_bundle) if self.ca_bundle else True
        try:
            with requests.get(
                self.url,
                headers=headers,
                timeout=(self.connect_timeout, self.read_timeout),
                verify=verify,
                stream=True,
                allow_redirects=True,
            ) as response:
                if response.status_code == 304:
                    return FetchResult(None, etag)
                if response.status_code != 200:
                    raise FetchError(
                        f"policy server answered HTTP {response.status_code} for {self.url}"
                    )
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(
                        f"policy is {declared} bytes, more than the limit of {self.max_bytes}"
                    )
                body = bytearray()
                # A server that trickles bytes resets the read timeout forever: bound it all.
                deadline = time.monotonic() + self.connect_timeout + 2 * self.read_timeout
                for chunk in response.iter_content(chunk_size=65536):
                    body += chunk
                    if time.monotonic() > deadline:
                        raise FetchError(f"the policy server is too slow ({self.url})")
                    if len(body) > self.max_bytes:
                        raise FetchError(
                            f"policy is larger than the limit of {self.max_bytes} bytes"
                        )
                return FetchResult(bytes(body), response.headers.get("ETag"))
        except requests.exceptions.SSLError as e:
            raise FetchError(f"TLS verification of {self.url} failed: {_tls_reason(e)}") from e
        except requests.exceptions.ConnectTimeout as e:
            raise FetchError(f"connecting to {self.url} timed out") from e
        except (requests.exceptions.ReadTimeout, requests.exceptions.Timeout) as e:
            raise FetchError(f"the policy server stalled past the read timeout ({self.url})") from e
        except requests.exceptions.ConnectionError as e:
            if "timed out" in str(e).lower():
                raise FetchError(
                    f"the policy server stalled past the read timeout ({self.url})"
                ) from e
            raise FetchError(f"cannot connect to {self.url}: {_short(e)}") from e
        except requests.exceptions.RequestException as e:
            raise FetchError(f"fetching {self.url} failed: {_short(e)}") from e


def _tls_reason(error: Exception) -> str:
    """The part of an OpenSSL error an admin can act on (name mismatch, unknown CA)."""
    text = str(error)
    m = re.search(r"certificate verify failed: ([^()\"']+)", text)
    return m.group(1).strip() if m else _short(error)


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:197] + "..."
