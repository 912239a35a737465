"""The user's refresh token in the OS keychain (macOS Keychain, Windows Credential Manager,
the Secret Service on Linux), through ``keyring``'s own backends for them, and nowhere else.

A refresh token is a long-lived credential: whoever reads it can sign in as the user until
it is revoked. So it is never written to a file: when ``keyring`` has no secure backend
(its ``fail`` or ``null`` backend, or a file backend of ``keyrings.alt``, plaintext or
"encrypted" with a password it would prompt for), the keychain is *unavailable* and the
caller signs in without storing. One entry per (issuer, client id), see ``account_name``.
"""

from __future__ import annotations

from typing import Final

import keyring
import keyring.errors
from keyring.backend import KeyringBackend

from agent.identity.errors import KeychainError, KeychainUnavailableError

__all__ = ["SERVICE", "Keychain", "account_name", "insecure_reason"]

SERVICE: Final = "pullgate"

_NO_BACKEND: Final = frozenset({"keyring.backends.fail", "keyring.backends.null"})
_FILE_BACKEND_PACKAGES: Final = ("keyrings.alt",)
KEYCHAIN_BACKENDS: Final = (
    "keyring.backends.SecretService",
    "keyring.backends.libsecret",
    "keyring.backends.kwallet",
    "keyring.backends.macOS",
    "keyring.backends.Windows",
)
"""keyring's own backends for the OS keychains: the only ones trusted with a refresh token.
Any other (a third-party plugin may keep secrets in a file) counts as no keychain."""


def account_name(issuer: str, client_id: str) -> str:
    """The keychain account of the refresh token for ``client_id`` at ``issuer``.

    A refresh token is only good at the issuer and for the client that it was issued to:
    keying on both means a token is never presented to another provider after IT changes
    ``oidc_issuer`` or ``oidc_client_id``, and changing back finds the old one again. A
    space cannot occur in an issuer URL, so the pair is unambiguous. The OS already keeps
    one keychain per user, so no user name is needed.
    """
    return f"{issuer} {client_id}"


def insecure_reason(backend: KeyringBackend) -> str | None:
    """Why ``backend`` must not hold a refresh token, or None when it is a real keychain."""
    children = getattr(backend, "backends", None)
    if type(backend).__name__ == "ChainerBackend" and isinstance(children, list):
        if not children:
            return "no keychain backend is available"
        for child in children:
            reason = insecure_reason(child)
            if reason is not None:
                return reason
        return None
    module = type(backend).__module__
    name = f"{module}.{type(backend).__name__}"
    if module in _NO_BACKEND:
        return f"no keychain backend is available ({name})"
    if module.startswith(_FILE_BACKEND_PACKAGES):
        return f"the keyring backend {name} keeps secrets in a file, not in a keychain"
    if module not in KEYCHAIN_BACKENDS and not module.startswith(
        tuple(f"{b}." for b in KEYCHAIN_BACKENDS)
    ):
        return f"the keyring backend {name} is not an OS keychain Pullgate knows"
    return None


class Keychain:
    """Load, store and delete one user's refresh token for one (issuer, client id).

    ``backend`` defaults to what ``keyring`` picks for this session (``PYTHON_KEYRING_BACKEND``
    and keyring's own config included). Every keyring failure becomes a ``KeychainError``;
    an insecure or missing backend a ``KeychainUnavailableError``.
    """

    def __init__(
        self, issuer: str, client_id: str, *, backend: KeyringBackend | None = None
    ) -> None:
        self.account = account_name(issuer, client_id)
        self._backend = backend

    @property
    def backend(self) -> KeyringBackend:
        if self._backend is None:
            try:
                self._backend = keyring.get_keyring()
            except Exception as e:  # keyring's own init errors vary by backend
                raise KeychainUnavailableError(f"the keychain cannot be opened: {e}") from e
        return self._backend

    @property
    def backend_name(self) -> str:
        backend = self.backend
        return f"{type(backend).__module__}.{type(backend).__name__}"

    def check_available(self) -> None:
        """Raise ``KeychainUnavailableError`` unless a real keychain backs this session."""
        reason = insecure_reason(self.backend)
        if reason is not None:
            raise KeychainUnavailableError(f"the keychain is unavailable: {reason}")

    def load(self) -> str | None:
        """The stored refresh token, or None when there is none."""
        self.check_available()
        try:
            value = self.backend.get_password(SERVICE, self.account)
        except keyring.errors.KeyringError as e:
            raise KeychainUnavailableError(f"the keychain cannot be read: {_why(e)}") from e
        except Exception as e:  # D-Bus and Secret Service errors are not KeyringErrors
            raise KeychainUnavailableError(f"the keychain cannot be read: {_why(e)}") from e
        return value or None

    def store(self, refresh_token: str) -> None:
        """Replace the stored refresh token with ``refresh_token``."""
        self.check_available()
        try:
            self.backend.set_password(SERVICE, self.account, refresh_token)
        except keyring.errors.PasswordSetError as e:
            raise KeychainError(f"the keychain refused the refresh token: {_why(e)}") from e
        except Exception as e:
            raise KeychainUnavailableError(f"the keychain cannot be written: {_why(e)}") from e

    def delete(self) -> bool:
        """Delete the stored refresh token: True if there was one."""
        self.check_available()
        try:
            self.backend.delete_password(SERVICE, self.account)
        except keyring.errors.PasswordDeleteError:
            return False
        except Exception as e:
            raise KeychainError(f"the keychain entry cannot be deleted: {_why(e)}") from e
        return True


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__
