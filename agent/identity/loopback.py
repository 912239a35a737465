"""Authorization code + PKCE with a loopback redirect (RFC 8252, RFC 7636, RFC 9207).

``BrowserSignIn`` listens on ``127.0.0.1`` on a port the OS picks (never ``localhost``: a
name may resolve elsewhere, and oidc-provider refuses it), builds the authorization URL with
a fresh ``state``, ``nonce`` and S256 code challenge, and asks for ``prompt=consent``
because OpenID Connect Core 11 lets a provider drop ``offline_access`` (and so the refresh
token) without it. A request to ``/callback`` without our ``state`` is answered 400 and
ignored (a page or another local user can neither finish the sign-in for the user nor end
it); the first one with it decides the sign-in: its ``iss`` must be the issuer when present
or when the provider promises it
(RFC 9207, mix-up attacks), and only then is the code exchanged. The browser gets a short
plain page saying how it ended, once the exchange is done.
"""

from __future__ import annotations

import base64
import hashlib
import html
import queue
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final

from agent.identity.errors import (
    AccessDeniedError,
    CallbackError,
    DiscoveryError,
    ProviderError,
    SignInCancelledError,
    SignInError,
    SignInTimeoutError,
    StateMismatchError,
    provider_text,
)
from agent.identity.provider import ProviderClient
from agent.identity.tokens import TokenSet, check_id_token, discard_tokens, exchange_tokens

__all__ = [
    "BROWSER_TIMEOUT",
    "CALLBACK_PATH",
    "BrowserSignIn",
    "pkce_pair",
]

CALLBACK_PATH: Final = "/callback"
BROWSER_TIMEOUT: Final = 300.0
"""Seconds the listener waits for the browser to come back."""
_REPLY_TIMEOUT: Final = 30.0
"""Seconds the browser's request waits for the code exchange before it is answered anyway."""


def pkce_pair() -> tuple[str, str]:
    """A fresh code verifier (RFC 7636 4.1, 64 chars) and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class _Callback:
    """The first redirect that reached the listener, and the page to answer it with."""

    params: dict[str, str]
    reply: str = ""
    answered: threading.Event = field(default_factory=threading.Event)


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    callbacks: queue.Queue[_Callback]
    taken: bool
    state: str


class _Handler(BaseHTTPRequestHandler):
    server: _Listener
    server_version = "pullgate-login"

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            self._answer(404, "Not found", "This is Pullgate's sign-in listener.")
            return
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        if not secrets.compare_digest(params.get("state", "").encode(), self.server.state.encode()):
            # Not this sign-in's redirect (an old tab, another local user, a web page
            # probing loopback ports): refused, and the sign-in goes on waiting for its own.
            self._answer(
                400,
                "Not this sign-in",
                "This link does not belong to the sign-in Pullgate is waiting for; nothing was "
                "done. Finish the sign-in from the page Pullgate opened.",
            )
            return
        if self.server.taken:
            self._answer(409, "Already finished", "This sign-in has already finished.")
            return
        self.server.taken = True
        callback = _Callback(params)
        self.server.callbacks.put(callback)
        callback.answered.wait(_REPLY_TIMEOUT)
        ok = callback.reply == ""
        self._answer(
            200 if ok else 400,
            "Signed in" if ok else "Sign-in failed",
            "You are signed in to Pullgate. You can close this window and return to the terminal."
            if ok
            else callback.reply,
        )

    def _answer(self, status: int, title: str, text: str) -> None:
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Pullgate: {html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:  # a library does not print
        return


class BrowserSignIn:
    """One code + PKCE sign-in: ``url`` to open in a browser, then ``wait()`` for tokens.

    Use as a context manager (the listener is closed on exit). ``wait`` returns the checked
    token set or raises a ``SignInError``; the listener answers only the first callback.
    """

    def __init__(
        self,
        client: ProviderClient,
        client_id: str,
        scopes: tuple[str, ...],
        *,
        extra_params: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.client_id = client_id
        metadata = client.discover()
        if metadata.authorization_endpoint is None:
            raise DiscoveryError(
                f"the identity provider {metadata.issuer} has no authorization_endpoint; "
                "browser sign-in is not possible"
            )
        methods = metadata.code_challenge_methods_supported
        if methods and "S256" not in methods:
            raise DiscoveryError(
                f"the identity provider {metadata.issuer} does not support PKCE S256 "
                f"(code_challenge_methods_supported: {list(methods)})"
            )
        self._server = _Listener(("127.0.0.1", 0), _Handler)
        self._server.callbacks = queue.Queue()
        self._server.taken = False
        self.state = self._server.state = secrets.token_urlsafe(24)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="pullgate-login-listener",
            daemon=True,
        )
        self._thread.start()
        port = self._server.server_address[1]
        self.redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        self.nonce = secrets.token_urlsafe(24)
        self._verifier, challenge = pkce_pair()
        params = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(scopes),
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if "offline_access" in scopes:
            params["prompt"] = "consent"
        params.update(extra_params or {})
        separator = "&" if "?" in metadata.authorization_endpoint else "?"
        self.url = metadata.authorization_endpoint + separator + urllib.parse.urlencode(params)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> BrowserSignIn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait(
        self,
        *,
        cancel: threading.Event,
        timeout: float = BROWSER_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenSet:
        """Wait for the browser's redirect and exchange its code: the checked token set."""
        deadline = clock() + timeout
        while True:
            if cancel.is_set():
                raise SignInCancelledError("sign-in cancelled; nothing was stored")
            remaining = deadline - clock()
            if remaining <= 0:
                raise SignInTimeoutError(
                    f"the browser did not come back to {self.redirect_uri} within "
                    f"{timeout:.0f} s; run the sign-in again"
                )
            try:
                callback = self._server.callbacks.get(timeout=min(0.2, remaining))
            except queue.Empty:
                continue
            try:
                tokens = self._finish(callback.params, cancel)
            except SignInError as e:
                callback.reply = f"Pullgate could not sign you in: {e}"
                raise
            except BaseException:
                callback.reply = "Pullgate stopped before the sign-in finished."
                raise
            finally:
                callback.answered.set()
            return tokens

    def _finish(self, params: Mapping[str, str], cancel: threading.Event) -> TokenSet:
        metadata = self.client.discover()
        if params.get("state") != self.state:
            raise StateMismatchError(
                "the browser came back with a state this sign-in did not send (an old tab, or "
                "another site trying to sign you in); nothing was stored"
            )
        iss = params.get("iss")
        iss_expected = iss is not None or metadata.authorization_response_iss_parameter_supported
        if iss_expected and iss != metadata.issuer:
            raise CallbackError(
                f"the browser came back from issuer {provider_text(iss)!r}, not "
                f"{metadata.issuer!r}; nothing was stored"
            )
        error = params.get("error")
        if error is not None:
            description = params.get("error_description")
            detail = provider_text(error) + (
                f": {provider_text(description)}" if description else ""
            )
            cls = AccessDeniedError if error == "access_denied" else ProviderError
            raise cls(
                f"browser sign-in: the provider said {detail}", error=error, description=description
            )
        code = params.get("code")
        if not code:
            raise CallbackError("the browser came back without an authorization code")
        if cancel.is_set():
            raise SignInCancelledError("sign-in cancelled; nothing was stored")
        tokens = exchange_tokens(
            self.client,
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": self._verifier,
                "redirect_uri": self.redirect_uri,
                "client_id": self.client_id,
            },
            what="browser sign-in",
        )
        if cancel.is_set():
            discard_tokens(self.client, self.client_id, tokens)
            raise SignInCancelledError("sign-in cancelled; nothing was stored")
        check_id_token(self.client, tokens.id_token, client_id=self.client_id, nonce=self.nonce)
        return tokens
