"""The OpenID provider as the sign-in client sees it: discovery and capped JSON over HTTPS.

Every request goes through ``ProviderClient`` so that the same rules hold for all of them:
HTTPS only (plain HTTP only to a loopback address, and only when the caller asks for it: the
tests' provider), the managed config's ``ca_bundle`` as the trust anchor when set, a timeout
on each request and a size cap on each answer. Discovery checks that the document's
``issuer`` is exactly the configured one (OpenID Connect Discovery 4.3): a document that
names another issuer could point the token and JWKS endpoints anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import requests

from agent.identity.errors import (
    DiscoveryError,
    InsecureURLError,
    ProviderUnreachableError,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "ProviderClient",
    "ProviderMetadata",
    "check_url",
]

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds for one request to the provider (connect and each read)."""

MAX_ANSWER_BYTES: Final = 1 << 20
"""A discovery document, JWKS or token answer is a few KB; more is refused unread."""

_LOOPBACK_NAMES: Final = frozenset({"localhost"})


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http_loopback: bool = False, what: str = "URL") -> str:
    """``url`` if it may carry tokens: HTTPS, or HTTP to a loopback address when allowed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and allow_http_loopback and _is_loopback(parts.hostname):
        return url
    raise InsecureURLError(f"the {what} {url!r} is not an https:// URL; sign-in needs HTTPS")


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the discovery document the client uses (OpenID Connect Discovery 3)."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    authorization_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


class ProviderClient:
    """HTTP to one issuer: discovery (fetched once), JSON GETs and form POSTs.

    ``ca_bundle`` is the PEM the managed config pins for the policy host and the provider;
    without it the system's trust store is used. ``allow_http_loopback`` exists for tests
    only: it permits ``http://127.0.0.1`` and never any other plain-HTTP host.
    """

    def __init__(
        self,
        issuer: str,
        *,
        ca_bundle: Path | None = None,
        allow_http_loopback: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.issuer = check_url(issuer, allow_http_loopback=allow_http_loopback, what="issuer")
        self.allow_http_loopback = allow_http_loopback
        self.timeout = timeout
        self._session = requests.Session()
        self._session.verify = str(ca_bundle) if ca_bundle is not None else True
        # A proxy from the environment never makes sense for a provider on this machine.
        self._session.trust_env = not _is_loopback(urllib.parse.urlsplit(issuer).hostname)
        self._metadata: ProviderMetadata | None = None

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- HTTP

    def request_json(
        self, method: str, url: str, *, data: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object) of one request; an empty body is ``{}``. Raises
        ``ProviderUnreachableError`` when no readable answer came back."""
        check_url(url, allow_http_loopback=self.allow_http_loopback, what="endpoint")
        try:
            with self._session.request(
                method,
                url,
                data=dict(data) if data is not None else None,
                headers={"Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            ) as response:
                raw = self._read_capped(response, url)
                status = response.status_code
        except requests.exceptions.SSLError as e:
            raise ProviderUnreachableError(
                f"TLS to the identity provider failed at {url}: {_reason(e)} (is the managed "
                "config's ca_bundle the CA that issued its certificate?)"
            ) from e
        except requests.RequestException as e:
            raise ProviderUnreachableError(
                f"cannot reach the identity provider at {url}: {_reason(e)}"
            ) from e
        if not raw.strip():
            return status, {}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise ProviderUnreachableError(
                f"the identity provider answered HTTP {status} at {url} without JSON"
            ) from e
        if not isinstance(body, dict):
            raise ProviderUnreachableError(
                f"the identity provider answered HTTP {status} at {url} with JSON that is "
                "not an object"
            )
        return status, body

    def _read_capped(self, response: requests.Response, url: str) -> bytes:
        body = bytearray()
        for chunk in response.iter_content(chunk_size=16384):
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise ProviderUnreachableError(
                    f"the answer from {url} is larger than {MAX_ANSWER_BYTES} bytes"
                )
        return bytes(body)

    def post_form(self, url: str, data: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        return self.request_json("POST", url, data=data)

    def get_json(self, url: str) -> dict[str, Any]:
        status, body = self.request_json("GET", url)
        if status != 200:
            raise ProviderUnreachableError(f"the identity provider answered HTTP {status} at {url}")
        return body

    # ----------------------------------------------------------------- discovery

    def discover(self) -> ProviderMetadata:
        """The provider's metadata, fetched once per client."""
        if self._metadata is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            self._metadata = parse_metadata(self.get_json(url), self.issuer)
            for endpoint in (
                self._metadata.token_endpoint,
                self._metadata.jwks_uri,
                self._metadata.authorization_endpoint,
                self._metadata.device_authorization_endpoint,
                self._metadata.revocation_endpoint,
            ):
                if endpoint is not None:
                    check_url(
                        endpoint,
                        allow_http_loopback=self.allow_http_loopback,
                        what="endpoint in the discovery document",
                    )
        return self._metadata


def parse_metadata(document: Mapping[str, Any], issuer: str) -> ProviderMetadata:
    """``document`` as ``ProviderMetadata`` for the configured ``issuer``, or
    ``DiscoveryError`` naming what is wrong."""
    found = document.get("issuer")
    if found != issuer:
        raise DiscoveryError(
            f"the identity provider's discovery document names issuer {found!r}, but the "
            f"managed config's oidc_issuer is {issuer!r}; they must be identical"
        )

    def text(name: str, *, required: bool = False) -> str | None:
        value = document.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise DiscoveryError(f"the discovery document of {issuer} has no usable {name}")
        return value

    def strings(name: str) -> tuple[str, ...]:
        value = document.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DiscoveryError(f"the discovery document of {issuer} has a malformed {name}")
        return tuple(value)

    token_endpoint = text("token_endpoint", required=True)
    jwks_uri = text("jwks_uri", required=True)
    assert token_endpoint is not None and jwks_uri is not None
    return ProviderMetadata(
        issuer=issuer,
        token_endpoint=token_endpoint,
        jwks_uri=jwks_uri,
        authorization_endpoint=text("authorization_endpoint"),
        device_authorization_endpoint=text("device_authorization_endpoint"),
        revocation_endpoint=text("revocation_endpoint"),
        id_token_signing_alg_values_supported=strings("id_token_signing_alg_values_supported"),
        code_challenge_methods_supported=strings("code_challenge_methods_supported"),
        authorization_response_iss_parameter_supported=(
            document.get("authorization_response_iss_parameter_supported") is True
        ),
        raw=dict(document),
    )


def _reason(error: requests.RequestException) -> str:
    """The innermost useful words of a requests error (not its whole repr chain)."""
    text = str(error)
    for marker in ("Caused by ", "certificate verify failed: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:200] or type(error).__name__
