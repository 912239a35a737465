"""One user's sign-in at the organisation's provider, end to end, for the CLI and the tray.

``SignInSession`` ties the flows to the keychain in the one order that is safe with
refresh-token rotation: every new refresh token is stored *before* the caller sees the
tokens (before the ID token goes to the agent), because the old one is spent the moment the
provider answers, and presenting a spent one again revokes the whole grant (oidc-provider
does). It never prints and never reads input: the device code and the browser URL go to
callbacks, cancellation comes in as a ``threading.Event``.

- ``silent()``: the stored refresh token → a new ID token, no user interaction; None when
  there is no usable stored token (a dead one is deleted).
- ``device(on_code, cancel)``: RFC 8628 (``agent.identity.device``).
- ``browser(on_url, cancel)``: code + PKCE on a loopback listener (``agent.identity.loopback``).
- ``sign_out()``: revoke at the provider, delete from the keychain; each step reported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from agent.identity.device import (
    DeviceAuthorization,
    poll_device_token,
    request_device_authorization,
)
from agent.identity.errors import (
    InvalidGrantError,
    KeychainError,
    KeychainUnavailableError,
    SignInError,
)
from agent.identity.keychain import Keychain
from agent.identity.loopback import BROWSER_TIMEOUT, BrowserSignIn
from agent.identity.provider import DEFAULT_TIMEOUT, ProviderClient
from agent.identity.tokens import TokenSet, refresh_tokens, revoke_token

__all__ = [
    "DEFAULT_SCOPES",
    "Method",
    "SignInResult",
    "SignInSession",
    "SignInSettings",
    "SignOutReport",
    "StepResult",
]

DEFAULT_SCOPES = ("openid", "email", "profile", "offline_access")


class Method(StrEnum):
    """How the tokens were obtained."""

    REFRESH = "refresh"
    DEVICE = "device"
    BROWSER = "browser"


@dataclass(frozen=True)
class SignInSettings:
    """Where and how to sign in: the managed config's ``oidc_*`` keys and ``ca_bundle``.

    ``allow_http_loopback`` is for tests only (a provider on ``http://127.0.0.1``).
    """

    issuer: str
    client_id: str
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    ca_bundle: Path | None = None
    allow_http_loopback: bool = False
    timeout: float = DEFAULT_TIMEOUT
    browser_timeout: float = BROWSER_TIMEOUT


@dataclass(frozen=True)
class SignInResult:
    """A successful sign-in: the tokens, how they came, and whether the refresh token is
    in the keychain now (``store_problem`` says why not)."""

    tokens: TokenSet
    method: Method
    stored: bool
    store_problem: str | None = None


@dataclass(frozen=True)
class StepResult:
    """One step of signing out: ``ok`` False means it failed; ``detail`` says what happened."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class SignOutReport:
    revoke: StepResult
    keychain: StepResult

    @property
    def ok(self) -> bool:
        return self.revoke.ok and self.keychain.ok


class SignInSession:
    """Sign-in for one user at one issuer; ``keychain`` None means never store (``--no-store``
    or no keychain here)."""

    def __init__(self, settings: SignInSettings, keychain: Keychain | None) -> None:
        self.settings = settings
        self.keychain = keychain
        self.client = ProviderClient(
            settings.issuer,
            ca_bundle=settings.ca_bundle,
            allow_http_loopback=settings.allow_http_loopback,
            timeout=settings.timeout,
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> SignInSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- flows

    def stored_refresh_token(self) -> str | None:
        """The refresh token in the keychain; None when none or no keychain."""
        if self.keychain is None:
            return None
        try:
            return self.keychain.load()
        except KeychainUnavailableError:
            return None

    def silent(self) -> SignInResult | None:
        """Renew the sign-in from the stored refresh token without the user.

        None when nothing usable is stored; a token the provider no longer honours is deleted
        (it can never work again). Other failures (provider unreachable, a bad ID token)
        raise: the caller decides whether to fall back to an interactive sign-in.
        """
        stored = self.stored_refresh_token()
        if stored is None:
            return None
        try:
            tokens = refresh_tokens(self.client, self.settings.client_id, stored)
        except InvalidGrantError:
            self._forget_dead_token()
            return None
        return self._keep(tokens, Method.REFRESH)

    def device(
        self,
        on_code: Callable[[DeviceAuthorization], None],
        *,
        cancel: threading.Event,
        on_slow_down: Callable[[float], None] | None = None,
        wait: Callable[[float], object] | None = None,
    ) -> SignInResult:
        """Sign in with the device flow: ``on_code`` shows the user code and URL, then the
        provider is polled until the user approves in any browser."""
        authorization = request_device_authorization(
            self.client, self.settings.client_id, self.settings.scopes
        )
        on_code(authorization)
        tokens = poll_device_token(
            self.client,
            self.settings.client_id,
            authorization,
            cancel=cancel,
            on_slow_down=on_slow_down,
            wait=wait,
        )
        return self._keep(tokens, Method.DEVICE)

    def browser(
        self,
        on_url: Callable[[str], None],
        *,
        cancel: threading.Event,
        timeout: float | None = None,
    ) -> SignInResult:
        """Sign in in a browser: ``on_url`` opens (or shows) the authorization URL; the
        loopback listener gets the code."""
        with BrowserSignIn(self.client, self.settings.client_id, self.settings.scopes) as flow:
            on_url(flow.url)
            tokens = flow.wait(
                cancel=cancel,
                timeout=self.settings.browser_timeout if timeout is None else timeout,
            )
        return self._keep(tokens, Method.BROWSER)

    # ----------------------------------------------------------------- sign-out

    def sign_out(self) -> SignOutReport:
        """Revoke the stored refresh token at the provider (when it has a revocation
        endpoint) and delete it from the keychain. Deleting happens even when revoking
        fails: a token the user asked to forget must not stay on the machine."""
        if self.keychain is None:
            none = StepResult(True, "no keychain: nothing was stored to revoke")
            return SignOutReport(none, StepResult(True, "no keychain: nothing stored"))
        try:
            stored = self.keychain.load()
        except KeychainUnavailableError as e:
            none = StepResult(True, f"nothing to revoke ({e})")
            return SignOutReport(none, StepResult(True, f"nothing stored ({e})"))
        if stored is None:
            revoke = StepResult(True, "no refresh token was stored: nothing to revoke")
        else:
            try:
                if revoke_token(self.client, self.settings.client_id, stored):
                    revoke = StepResult(True, "revoked the refresh token at the provider")
                else:
                    revoke = StepResult(
                        True,
                        "the provider advertises no revocation endpoint: the refresh token "
                        "stays valid there until it expires",
                    )
            except SignInError as e:
                revoke = StepResult(False, f"could not revoke the refresh token: {e}")
        try:
            deleted = self.keychain.delete()
        except KeychainError as e:
            return SignOutReport(revoke, StepResult(False, str(e)))
        keychain = StepResult(
            True,
            "deleted the stored sign-in from the keychain"
            if deleted
            else "the keychain held no sign-in",
        )
        return SignOutReport(revoke, keychain)

    # ----------------------------------------------------------------- storing

    def _keep(self, tokens: TokenSet, method: Method) -> SignInResult:
        """Store the new refresh token first (rotation), then hand the tokens back."""
        if self.keychain is None:
            return SignInResult(tokens, method, stored=False, store_problem="not storing")
        if tokens.refresh_token is None:
            # No new refresh token: an old stored one may still be valid (a provider that
            # does not rotate), so it is left alone.
            return SignInResult(
                tokens,
                method,
                stored=False,
                store_problem="the provider issued no refresh token (is offline_access among "
                "the scopes?)",
            )
        try:
            self.keychain.store(tokens.refresh_token)
        except KeychainError as e:
            if method is Method.REFRESH:
                self._forget_dead_token()  # the stored one was spent by this refresh
            return SignInResult(tokens, method, stored=False, store_problem=str(e))
        return SignInResult(tokens, method, stored=True)

    def _forget_dead_token(self) -> None:
        if self.keychain is not None:
            with contextlib.suppress(KeychainError):
                self.keychain.delete()
