"""The device authorization grant (RFC 8628): a code the user approves in any browser.

``request_device_authorization`` asks for a device code; ``poll_device_token`` then polls
the token endpoint at the provider's interval until the user approves, declines, or the
code expires. It follows RFC 8628 3.5 exactly: 5 s when the provider sends no ``interval``
(oidc-provider sends none by itself), 5 s more for this and every later poll after each
``slow_down``, and it stops at the code's ``expires_in`` even if the provider would keep
answering ``authorization_pending``. An ``invalid_grant`` while polling means the code is
gone (oidc-provider forgets an expired code ~15 s after ``expired_token``), so it is
reported as expired too: either way the user must start again.

Cancellation is a ``threading.Event``: the wait between polls returns as soon as it is set,
and tokens that arrive after it was set are revoked and never returned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agent.identity.errors import (
    DiscoveryError,
    ExpiredError,
    InvalidGrantError,
    ProviderError,
    SignInCancelledError,
    provider_text,
)
from agent.identity.provider import ProviderClient, check_url
from agent.identity.tokens import (
    TokenSet,
    check_id_token,
    discard_tokens,
    exchange_tokens,
    token_error,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "DEVICE_GRANT",
    "SLOW_DOWN_STEP",
    "DeviceAuthorization",
    "poll_device_token",
    "request_device_authorization",
]

DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL: Final = 5.0
"""RFC 8628 3.2: the poll interval when the provider names none."""
SLOW_DOWN_STEP: Final = 5.0
"""RFC 8628 3.5: added to the interval on each ``slow_down``."""
DEFAULT_EXPIRES_IN: Final = 300.0
"""When the provider omits ``expires_in`` (it must not), the client still gives up."""


@dataclass(frozen=True)
class DeviceAuthorization:
    """The device authorization response (RFC 8628 3.2), plus when it was received."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float
    received_at: float
    """``time.monotonic()`` when the response arrived: the code's lifetime counts from it."""

    def __repr__(self) -> str:  # the device code is a credential until it is spent
        return (
            f"DeviceAuthorization(user_code={self.user_code!r}, "
            f"verification_uri={self.verification_uri!r}, expires_in={self.expires_in})"
        )


def request_device_authorization(
    client: ProviderClient, client_id: str, scopes: tuple[str, ...]
) -> DeviceAuthorization:
    """Ask the provider for a device code and a user code for ``scopes``."""
    metadata = client.discover()
    endpoint = metadata.device_authorization_endpoint
    if endpoint is None:
        raise DiscoveryError(
            f"the identity provider {metadata.issuer} does not offer the device flow (no "
            "device_authorization_endpoint); use `pullgate login --browser`"
        )
    status, body = client.post_form(endpoint, {"client_id": client_id, "scope": " ".join(scopes)})
    received = time.monotonic()
    if status != 200 or "error" in body:
        raise token_error(status, body, "starting the device sign-in")
    device_code = body.get("device_code")
    user_code = body.get("user_code")
    uri = body.get("verification_uri")
    if not all(isinstance(v, str) and v for v in (device_code, user_code, uri)):
        raise ProviderError(
            "starting the device sign-in: the provider's answer lacks device_code, user_code "
            "or verification_uri",
            error="invalid_response",
        )
    assert isinstance(device_code, str) and isinstance(user_code, str) and isinstance(uri, str)
    check_url(uri, allow_http_loopback=client.allow_http_loopback, what="verification_uri")
    complete = body.get("verification_uri_complete")
    if isinstance(complete, str) and complete:
        check_url(complete, allow_http_loopback=client.allow_http_loopback, what="verification URL")
    else:
        complete = None
    expires_in = body.get("expires_in")
    interval = body.get("interval")
    return DeviceAuthorization(
        device_code=device_code,
        user_code=user_code,
        verification_uri=uri,
        verification_uri_complete=complete,
        expires_in=float(expires_in)
        if isinstance(expires_in, int | float) and expires_in > 0
        else DEFAULT_EXPIRES_IN,
        interval=float(interval)
        if isinstance(interval, int | float) and interval > 0
        else DEFAULT_INTERVAL,
        received_at=received,
    )


def poll_device_token(
    client: ProviderClient,
    client_id: str,
    authorization: DeviceAuthorization,
    *,
    cancel: threading.Event,
    on_slow_down: Callable[[float], None] | None = None,
    wait: Callable[[float], object] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TokenSet:
    """Poll until the user approves: the token set (its ID token checked), or
    ``AccessDeniedError``, ``ExpiredError``, ``SignInCancelledError``, ``ProviderError``.

    ``on_slow_down(new_interval)`` reports each back-off. ``wait(seconds)`` replaces the
    wait between polls (default: ``cancel.wait``); ``cancel`` is checked after every wait and
    every request either way.
    """
    pause = wait if wait is not None else cancel.wait
    interval = authorization.interval
    deadline = authorization.received_at + authorization.expires_in
    data = {"grant_type": DEVICE_GRANT, "device_code": authorization.device_code}
    data["client_id"] = client_id
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise _expired(authorization)
        pause(min(interval, remaining))
        if cancel.is_set():
            raise SignInCancelledError("sign-in cancelled; nothing was stored")
        if clock() >= deadline:
            raise _expired(authorization)
        try:
            tokens = exchange_tokens(client, data, what="device sign-in")
        except ProviderError as e:
            if e.error == "authorization_pending":
                continue
            if e.error == "slow_down":
                interval += SLOW_DOWN_STEP
                if on_slow_down is not None:
                    on_slow_down(interval)
                continue
            if isinstance(e, InvalidGrantError):
                raise _expired(authorization, e.description) from e
            raise
        if cancel.is_set():
            discard_tokens(client, client_id, tokens)
            raise SignInCancelledError("sign-in cancelled; nothing was stored")
        check_id_token(client, tokens.id_token, client_id=client_id)
        return tokens


def _expired(authorization: DeviceAuthorization, description: str | None = None) -> ExpiredError:
    detail = f" ({provider_text(description)})" if description else ""
    return ExpiredError(
        f"the code {authorization.user_code} expired before it was approved{detail}; "
        "run the sign-in again for a new code",
        error="expired_token",
        description=description,
    )
