"""Signed-in users: ID tokens verified by the agent itself, bound to the OS user who
presented them (docs/sign-in.md).

The per-user side (``pullgate login``, the tray) hands the agent an ID token over the control
API (``PUT /v1/identity``); the agent never sees a refresh token. ``ProviderKeys`` fetches the
issuer's discovery document and JWKS over HTTPS with the policy fetcher's care (HTTPS only,
capped, one deadline) and caches them; an unknown ``kid`` refetches them once (at most every
10 s, so no user can make the agent hammer the provider). ``IdentityStore`` verifies the
signature with PyJWT, leaves every claim rule to ``agent.core.identity``, refuses a token it
has accepted before, and keeps one identity per uid until ``identity_max_age`` after the last
proof. Every sign-in, refusal (with its reason), sign-out and expiry is an event on the bus,
so it reaches the audit log and the control API's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import jwt

from agent.core import strict_json
from agent.core.decision import Identity
from agent.core.events import Event, NoticeEvent
from agent.core.identity import (
    ASYMMETRIC_ALGORITHMS,
    MAX_TOKEN_BYTES,
    Binding,
    Expectations,
    RefusalReason,
    TokenRefusedError,
    check_claims,
    check_header,
    token_digest,
)
from agent.core.peer import PeerInfo, Principal, principal_of
from agent.daemon.policy_fetch import Fetcher, FetchError

__all__ = [
    "IdentityStore",
    "ProviderKeys",
    "VerifierSettings",
]

KEYS_TTL: Final = 3600.0
"""A fetched JWKS is used this long before it is fetched again (providers rotate slowly)."""
UNKNOWN_KID_INTERVAL: Final = 10.0
"""An unknown key id refetches the JWKS at most this often: soon enough for a provider that
signs with a new key the moment it publishes it, rarely enough that no user can make the
agent hammer the provider (each user may also present only 10 tokens a minute)."""
FAILURE_RETRY: Final = 10.0
"""With no keys yet, a failed fetch is retried at most this often (each sign-in asks)."""
MAX_DOCUMENT_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class VerifierSettings:
    """The managed config's sign-in keys, as the agent verifies tokens with them (the
    per-user side has its own ``agent.identity.session.SignInSettings``)."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    groups_claim: str
    methods: tuple[str, ...]
    max_age: timedelta
    allowed_domains: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    timeout: float = 10.0

    @property
    def expectations(self) -> Expectations:
        return Expectations(
            issuer=self.issuer,
            client_id=self.client_id,
            allowed_domains=self.allowed_domains,
            groups_claim=self.groups_claim,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "scopes": list(self.scopes),
            "groups_claim": self.groups_claim,
            "methods": list(self.methods),
            "identity_max_age": self.max_age.total_seconds(),
            "allowed_domains": list(self.allowed_domains),
        }


@dataclass
class _KeySet:
    keys: dict[str, dict[str, Any]]  # public signing JWKs by kid ("" for one without)
    algorithms: frozenset[str]
    fetched_at: float  # monotonic, for the cache's age
    fetched_wall: float = field(default_factory=time.time)  # for people


class ProviderKeys:
    """The issuer's signing keys, from its discovery document and JWKS."""

    def __init__(self, settings: VerifierSettings) -> None:
        self.settings = settings
        self._keys: _KeySet | None = None
        self._fetching: asyncio.Future[_KeySet] | None = None
        self._last_attempt = 0.0
        self.error: str | None = None

    def status(self) -> dict[str, Any]:
        keys = self._keys
        if keys is None:
            state = "unavailable" if self.error else "not-fetched"
        else:
            state = "stale" if self.error else "ok"
        return {
            "state": state,
            "key_ids": sorted(keys.keys) if keys else [],
            "algorithms": sorted(keys.algorithms) if keys else [],
            "fetched_at": keys.fetched_wall if keys else None,
            "error": self.error,
        }

    async def get(self, *, refresh: bool = False) -> _KeySet:
        """The cached key set, fetched when missing, older than ``KEYS_TTL`` or ``refresh``
        (an unknown kid; rate-limited). Concurrent callers share one fetch."""
        keys = self._keys
        now = time.monotonic()
        since = now - self._last_attempt
        if keys is not None and not refresh and now - keys.fetched_at <= KEYS_TTL:
            return keys
        if keys is not None and since < UNKNOWN_KID_INTERVAL:
            return keys  # fetched (or failed to) within the minute: what we have counts
        if keys is None and self.error is not None and since < FAILURE_RETRY:
            raise _unavailable(self.error)  # the provider was down a moment ago
        if self._fetching is None or self._fetching.done():
            self._last_attempt = now
            self._fetching = asyncio.ensure_future(asyncio.to_thread(self._fetch))
            self._fetching.add_done_callback(_retrieve)
        try:
            self._keys = await asyncio.shield(self._fetching)
            self.error = None
        except Exception as e:  # untrusted bytes: whatever fails, sign-ins get a reason
            refused = e if isinstance(e, TokenRefusedError) else _unavailable(repr(e))
            self.error = refused.message.removeprefix(_UNAVAILABLE)
            if keys is None:
                if refused is e:
                    raise
                raise refused from e
            return keys  # the provider is down: the keys it published before still count
        return self._keys

    def _fetch(self) -> _KeySet:
        """Discovery, then the JWKS (in a worker thread: requests blocks)."""
        s = self.settings
        discovery_url = s.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._json(discovery_url, "identity provider's discovery document")
        if doc.get("issuer") != s.issuer:
            raise _unavailable(
                f"the discovery document at {discovery_url} names the issuer "
                f"{doc.get('issuer')!r}, not {s.issuer!r} (check oidc_issuer)"
            )
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise _unavailable(f"the discovery document names no https:// jwks_uri: {jwks_uri!r}")
        advertised = doc.get("id_token_signing_alg_values_supported", ["RS256"])
        if not isinstance(advertised, list):
            raise _unavailable("id_token_signing_alg_values_supported is not a list")
        algorithms = frozenset(a for a in advertised if a in ASYMMETRIC_ALGORITHMS)
        if not algorithms:
            raise _unavailable(
                f"the identity provider advertises no public-key algorithm for ID tokens "
                f"({advertised!r})"
            )
        jwks = self._json(jwks_uri, "identity provider's keys (JWKS)")
        raw_keys = jwks.get("keys")
        if not isinstance(raw_keys, list):
            raise _unavailable(f"{jwks_uri} holds no 'keys' list")
        keys: dict[str, dict[str, Any]] = {}
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue  # a key type this PyJWT cannot use is skipped
            if key.algorithm_name not in ASYMMETRIC_ALGORITHMS or "d" in raw:
                continue  # symmetric ("oct") keys, and private keys a careless IdP published
            if not _sane_rsa(key):
                continue  # a key built to make every verification slow
            kid = raw.get("kid", "")
            if isinstance(kid, str):
                keys[kid] = raw
        if not keys:
            raise _unavailable(f"{jwks_uri} holds no usable public signing key")
        return _KeySet(keys, algorithms, time.monotonic())

    def _json(self, url: str, what: str) -> dict[str, Any]:
        fetcher = Fetcher(
            url=url,
            ca_bundle=self.settings.ca_bundle,
            connect_timeout=self.settings.timeout,
            read_timeout=self.settings.timeout,
            max_bytes=MAX_DOCUMENT_BYTES,
            what=what,
            same_host=True,
        )
        try:
            body = fetcher.fetch().body or b""
        except FetchError as e:
            raise _unavailable(e.reason) from e
        try:
            data = strict_json.loads(body)
        except ValueError as e:
            raise _unavailable(f"the {what} at {url} is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise _unavailable(f"the {what} at {url} is not a JSON object")
        return data


MAX_RSA_BITS: Final = 8192
MAX_RSA_EXPONENT_BITS: Final = 32
"""Real providers use e = 65537 and 2048-4096-bit moduli; a key with a huge exponent costs
milliseconds per verification on the loop, so such keys are not used."""


def _sane_rsa(key: jwt.PyJWK) -> bool:
    numbers = getattr(key.key, "public_numbers", None)
    if numbers is None or key.key_type != "RSA":
        return True
    public = numbers()
    modulus: int = public.n.bit_length()
    exponent: int = public.e.bit_length()
    return 2048 <= modulus <= MAX_RSA_BITS and exponent <= MAX_RSA_EXPONENT_BITS


_UNAVAILABLE: Final = "the agent cannot get the identity provider's keys: "


def _unavailable(message: str) -> TokenRefusedError:
    return TokenRefusedError(RefusalReason.KEYS_UNAVAILABLE, _UNAVAILABLE + message)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


Emit = Callable[[Event], None]


@dataclass
class IdentityStore:
    """Accepted identities by uid, and the tokens already used."""

    settings: VerifierSettings
    emit: Emit
    keys: ProviderKeys = field(init=False)
    _bindings: dict[Principal, Binding] = field(default_factory=dict)
    _used: dict[str, float] = field(default_factory=dict)  # token digest -> forget after
    _timers: dict[Principal, asyncio.TimerHandle] = field(default_factory=dict)
    _prefetch: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.keys = ProviderKeys(self.settings)

    # -- the hot path ------------------------------------------------------------------

    def identity_for(self, uid: Principal | None) -> Identity | None:
        """The identity bound to ``uid``, if it is still live (each shim decision asks)."""
        if uid is None:
            return None
        binding = self._bindings.get(uid)
        if binding is None or not binding.live(time.time()):
            return None
        return binding.identity

    # -- the control API ---------------------------------------------------------------

    def binding(self, uid: Principal) -> Binding | None:
        binding = self._bindings.get(uid)
        return binding if binding is not None and binding.live(time.time()) else None

    def bindings(self) -> list[Binding]:
        now = time.time()
        return sorted((b for b in self._bindings.values() if b.live(now)), key=_by_principal)

    async def accept(self, token: str, peer: PeerInfo) -> Binding:
        """Verify ``token`` and bind it to ``peer.uid`` (on Windows its SID,
        ``principal_of``); ``TokenRefusedError`` says why not. Either way the outcome is
        an event (and so an audit record)."""
        who = principal_of(peer)
        assert who is not None
        try:
            binding = await self._verify(token, who)
        except TokenRefusedError as e:
            self.refused(e, peer)
            raise
        previous = self._bindings.get(who)
        self._bindings[who] = binding
        self._schedule_expiry(binding, peer)
        c = binding.claims
        renewed = previous is not None and previous.live(time.time())
        self.emit(
            NoticeEvent(
                action="sign-in",
                outcome="success",
                reason=(
                    f"{c.email} {'renewed their sign-in' if renewed else 'signed in'} "
                    f"as OS user {peer.user or peer.uid}"
                ),
                details=_details(binding) | {"renewed": renewed},
                peer=peer,
            )
        )
        return binding

    def refused(self, e: TokenRefusedError, peer: PeerInfo) -> None:
        """Record a refused sign-in (also one whose request held no token at all)."""
        self.emit(
            NoticeEvent(
                action="sign-in",
                outcome="failure",
                reason=f"sign-in refused ({e.reason}): {e.message}",
                severity="warning",
                details={"reason": str(e.reason), "issuer": self.settings.issuer},
                peer=peer,
            )
        )

    def forget(self, peer: PeerInfo) -> bool:
        """Sign ``peer.uid`` (on Windows its SID) out; False when nobody was signed in there."""
        who = principal_of(peer)
        assert who is not None
        binding = self._bindings.pop(who, None)
        timer = self._timers.pop(who, None)
        if timer is not None:
            timer.cancel()
        if binding is None or not binding.live(time.time()):
            return False
        self.emit(
            NoticeEvent(
                action="sign-out",
                outcome="success",
                reason=f"{binding.claims.email} signed out of OS user {peer.user or peer.uid}",
                details=_details(binding),
                peer=peer,
            )
        )
        return True

    # -- lifetime (a Service of the agent) ----------------------------------------------

    async def start(self) -> None:
        """Fetch the provider's keys in the background: the first sign-in is then quick,
        and status shows at once whether the provider can be reached."""
        self._prefetch = asyncio.get_running_loop().create_task(self._fetch_keys())

    async def _fetch_keys(self) -> None:
        try:
            await self.keys.get()
        except TokenRefusedError:
            pass  # kept in keys.error: status and doctor show it, sign-ins retry
        except Exception as e:  # supervised: whatever the provider sends, never a crash
            self.keys.error = f"fetching the keys failed: {e!r}"

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._prefetch is not None:
            self._prefetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prefetch

    # -- verification ------------------------------------------------------------------

    async def _verify(self, token: str, uid: Principal) -> Binding:
        if len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise TokenRefusedError(RefusalReason.MALFORMED, "that is not an ID token (JWT)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenRefusedError(
                RefusalReason.MALFORMED, f"that is not an ID token (JWT): {e}"
            ) from e
        keys = await self.keys.get()
        alg = check_header(header, keys.algorithms)
        key = await self._key(header.get("kid"), alg, keys)
        try:
            # Only the signature here; every claim rule is core's (precise reasons).
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "require": [],
                },
            )
        except jwt.InvalidSignatureError as e:
            raise TokenRefusedError(
                RefusalReason.BAD_SIGNATURE,
                f"the token's signature does not verify with the provider's key "
                f"{header.get('kid')!r}",
            ) from e
        except jwt.PyJWTError as e:
            raise TokenRefusedError(
                RefusalReason.BAD_SIGNATURE, f"the token cannot be verified: {e}"
            ) from e
        now = time.time()
        expect = self.settings.expectations
        verified = check_claims(claims, expect, now)
        digest = token_digest(token)
        self._forget_used(now)
        if digest in self._used:
            raise TokenRefusedError(
                RefusalReason.REPLAYED,
                "this ID token was already presented; each token is accepted once "
                "(sign in again for a new one)",
            )
        # Until it would be refused as stale anyway: then it need not be remembered.
        window = (expect.max_token_age + 2 * expect.leeway).total_seconds()
        self._used[digest] = verified.issued_at + window
        return Binding(uid, verified, now, now + self.settings.max_age.total_seconds())

    async def _key(self, kid: object, alg: str, keys: _KeySet) -> jwt.PyJWK:
        """The provider's key for this token, bound to the token's algorithm."""
        for attempt in range(2):
            raw: dict[str, Any] | None = None
            if kid is None:
                if len(keys.keys) > 1:
                    raise TokenRefusedError(
                        RefusalReason.MALFORMED,
                        "the token names no key id (kid) and the provider has several keys",
                    )
                raw = next(iter(keys.keys.values()))
            elif isinstance(kid, str):
                raw = keys.keys.get(kid)
            if raw is not None:
                if raw.get("alg", alg) != alg:
                    raise TokenRefusedError(
                        RefusalReason.BAD_ALGORITHM,
                        f"the token says {alg!r} but the provider's key {kid!r} is for "
                        f"{raw.get('alg')!r}",
                    )
                try:
                    return jwt.PyJWK(raw, algorithm=alg)
                except jwt.PyJWTError as e:
                    raise TokenRefusedError(
                        RefusalReason.BAD_ALGORITHM,
                        f"the provider's key {kid!r} cannot verify {alg!r}: {e}",
                    ) from e
            if attempt == 0:
                keys = await self.keys.get(refresh=True)  # a rotation since the last fetch?
        raise TokenRefusedError(
            RefusalReason.UNKNOWN_KEY,
            f"the token is signed with a key (kid {kid!r}) that is not among the identity "
            f"provider's keys fetched at {_clock(keys.fetched_wall)} (they are fetched again "
            f"at most every {UNKNOWN_KID_INTERVAL:.0f} s)",
        )

    def _forget_used(self, now: float) -> None:
        if len(self._used) < 64:
            return
        for digest in [d for d, until in self._used.items() if until < now]:
            del self._used[digest]

    # -- expiry ------------------------------------------------------------------------

    def _schedule_expiry(self, binding: Binding, peer: PeerInfo) -> None:
        previous = self._timers.pop(binding.uid, None)
        if previous is not None:
            previous.cancel()
        with contextlib.suppress(RuntimeError):  # no loop: nobody to tell
            loop = asyncio.get_running_loop()
            delay = max(0.0, binding.expires_at - time.time())
            self._timers[binding.uid] = loop.call_later(delay, self._expired, binding, peer)

    def _expired(self, binding: Binding, peer: PeerInfo) -> None:
        self._timers.pop(binding.uid, None)
        if self._bindings.get(binding.uid) is not binding:
            return
        del self._bindings[binding.uid]
        self.emit(
            NoticeEvent(
                action="identity-expired",
                outcome="success",
                reason=(
                    f"the sign-in of {binding.claims.email} as OS user {peer.user or peer.uid} "
                    f"expired (identity_max_age {self.settings.max_age}); "
                    "`pullgate login` renews it"
                ),
                details=_details(binding),
                peer=peer,
            )
        )

    def status(self, uid: Principal) -> dict[str, Any]:
        """The identity part of ``GET /v1/status`` for ``uid`` (root sees every user)."""
        mine = self.binding(uid)
        status: dict[str, Any] = {
            "configured": True,
            "sign_in": self.settings.to_json(),
            "keys": self.keys.status(),
            "you": mine.to_json() if mine else None,
        }
        if uid == 0:
            status["users"] = [b.to_json() for b in self.bindings()]
        return status


def _by_principal(binding: Binding) -> tuple[int, str]:
    """Bindings in uid order (on Windows, where they are keyed by SID, in SID order)."""
    uid = binding.uid
    return (uid, "") if isinstance(uid, int) else (-1, uid)


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _details(binding: Binding) -> dict[str, Any]:
    c = binding.claims
    return {
        "email": c.email,
        "subject": c.subject,
        "groups": list(c.groups),
        "issuer": c.issuer,
        "uid": binding.uid,
        "expires_at": binding.expires_at,
    }
