"""Every way a sign-in can fail, as one exception family with messages a user can act on.

The CLI and the tray catch ``SignInError`` and print ``str(error)``; the subclasses exist so
that callers can react to a cause (start the device flow again after ``ExpiredError``, drop
a dead refresh token after ``InvalidGrantError``, say "nothing was stored" after
``SignInCancelledError``) without parsing text. Text that came from the provider is made
printable (``agent.core.text``) and capped before it goes into a message.
"""

from __future__ import annotations

from agent.core.text import printable

__all__ = [
    "AccessDeniedError",
    "CallbackError",
    "DiscoveryError",
    "ExpiredError",
    "IDTokenError",
    "InsecureURLError",
    "InvalidGrantError",
    "KeychainError",
    "KeychainUnavailableError",
    "ProviderError",
    "ProviderUnreachableError",
    "SignInCancelledError",
    "SignInError",
    "SignInTimeoutError",
    "StateMismatchError",
    "provider_text",
]

MAX_PROVIDER_TEXT = 300


def provider_text(text: object) -> str:
    """Untrusted text from the provider (an error description) made safe for a terminal."""
    value = printable(str(text))
    return value if len(value) <= MAX_PROVIDER_TEXT else value[:MAX_PROVIDER_TEXT] + "..."


class SignInError(Exception):
    """Base of everything the sign-in library raises."""


class InsecureURLError(SignInError):
    """An issuer or endpoint that is not HTTPS (plain HTTP only to 127.0.0.1 in tests)."""


class ProviderUnreachableError(SignInError):
    """The provider could not be reached (DNS, TCP, TLS, timeout) or sent no readable JSON."""


class DiscoveryError(SignInError):
    """The discovery document is unusable: wrong issuer, missing endpoint, bad JSON."""


class ProviderError(SignInError):
    """The provider answered with an OAuth error (RFC 6749 5.2): ``error`` is its code."""

    def __init__(self, message: str, *, error: str, description: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.description = description


class AccessDeniedError(ProviderError):
    """The user (or the provider's policy) declined the sign-in."""


class ExpiredError(ProviderError):
    """The device code expired before the user approved it: start again."""


class InvalidGrantError(ProviderError):
    """A refresh token, code or device code the provider no longer honours."""


class SignInCancelledError(SignInError):
    """The caller cancelled (Ctrl-C, the tray's Cancel) before tokens were obtained."""


class SignInTimeoutError(SignInError):
    """The browser never came back to the loopback listener in time."""


class CallbackError(SignInError):
    """The redirect to the loopback listener was not the answer to this sign-in."""


class StateMismatchError(CallbackError):
    """The redirect's ``state`` is not the one this sign-in sent (CSRF, or a stale tab)."""


class IDTokenError(SignInError):
    """The ID token failed the client's checks (signature, ``iss``, ``aud``, ``nonce``)."""


class KeychainError(SignInError):
    """The OS keychain failed while reading, writing or deleting the stored sign-in."""


class KeychainUnavailableError(KeychainError):
    """There is no secure keychain here (no Secret Service, or only a plaintext backend)."""
