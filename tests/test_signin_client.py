"""The sign-in library (agent.identity) against the real OpenID provider (tests/oidc) and a
real Secret Service (tests/keychain.py): device flow, code + PKCE on a loopback listener,
silent renewal, sign-out, and the keychain. No agent is involved: the library stops at
"here are the tokens, and the refresh token is stored".

The user's side (approving a device code, signing in in a browser) is the harness's
headless browser, run on a worker thread while the library waits, as a person would.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import keyring.backends.fail
import keyring.backends.null
import pytest
import requests
from keyring.backend import KeyringBackend
from keyring.backends import SecretService

from agent.identity.device import DeviceAuthorization, poll_device_token
from agent.identity.errors import (
    AccessDeniedError,
    CallbackError,
    DiscoveryError,
    ExpiredError,
    IDTokenError,
    InsecureURLError,
    KeychainUnavailableError,
    ProviderUnreachableError,
    SignInCancelledError,
)
from agent.identity.keychain import Keychain, account_name, insecure_reason
from agent.identity.provider import ProviderClient
from agent.identity.session import Method, SignInSession, SignInSettings
from agent.identity.tokens import check_id_token
from tests.keychain import KeychainProcess
from tests.oidc_provider import CLIENT_ID, OIDCProvider

SCOPES = ("openid", "email", "profile", "groups", "offline_access")
HTTP_TIMEOUT = 10.0


@pytest.fixture
def settings(oidc_provider: OIDCProvider) -> SignInSettings:
    return SignInSettings(
        issuer=oidc_provider.issuer,
        client_id=CLIENT_ID,
        scopes=SCOPES,
        ca_bundle=oidc_provider.ca_bundle,
        browser_timeout=30.0,
    )


@pytest.fixture
def store(
    keychain: KeychainProcess, oidc_provider: OIDCProvider, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Keychain]:
    """The private keychain, empty for this test's (issuer, client) before and after."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", keychain.env["DBUS_SESSION_BUS_ADDRESS"])
    entry = Keychain(oidc_provider.issuer, CLIENT_ID, backend=SecretService.Keyring())  # type: ignore[no-untyped-call]
    entry.delete()
    yield entry
    entry.delete()


@pytest.fixture
def fast_device(oidc_provider: OIDCProvider) -> Iterator[None]:
    with oidc_provider.settings(device_interval=1):
        yield


@pytest.fixture
def user() -> Iterator[ThreadPoolExecutor]:
    """The person at the browser: runs the harness's headless browser beside the library."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="user") as pool:
        yield pool


def approve(
    oidc_provider: OIDCProvider, user: ThreadPoolExecutor, account: str, futures: list[Future[Any]]
) -> Callable[[DeviceAuthorization], None]:
    """An `on_code` that has `account` approve the code in a browser, on another thread."""

    def on_code(authorization: DeviceAuthorization) -> None:
        futures.append(user.submit(oidc_provider.approve_device, authorization.user_code, account))

    return on_code


def redirect_uri_of(url: str) -> str:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["redirect_uri"]


def browser_user(
    oidc_provider: OIDCProvider,
    user: ThreadPoolExecutor,
    account: str,
    futures: list[Future[requests.Response]],
    tamper: Callable[[str], str] = lambda location: location,
) -> Callable[[str], None]:
    """An `on_url` that signs `account` in at the provider and follows the redirect back to
    the loopback listener (after `tamper` rewrote it), as a browser would."""

    def sign_in(url: str) -> requests.Response:
        location = oidc_provider.authorize_in_browser(
            url, account, redirect_uri=redirect_uri_of(url)
        )
        return requests.get(tamper(location), timeout=HTTP_TIMEOUT)

    def on_url(url: str) -> None:
        futures.append(user.submit(sign_in, url))

    return on_url


# --------------------------------------------------------------------------- device flow


@pytest.mark.usefixtures("fast_device")
def test_device_flow_signs_in_and_stores_the_new_refresh_token(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
) -> None:
    approvals: list[Future[Any]] = []
    shown: list[DeviceAuthorization] = []
    on_code = approve(oidc_provider, user, "bob", approvals)

    def show(authorization: DeviceAuthorization) -> None:
        shown.append(authorization)
        on_code(authorization)

    with SignInSession(settings, store) as session:
        result = session.device(show, cancel=threading.Event())
    approvals[0].result(HTTP_TIMEOUT)

    assert result.method is Method.DEVICE and result.stored, result
    assert result.tokens.refresh_token is not None
    assert store.load() == result.tokens.refresh_token
    claims = oidc_provider.verify_id_token(result.tokens.id_token)
    assert claims["email"] == "bob@acme.test" and claims["groups"] == ["developers"]
    code = shown[0]
    assert code.interval == 1.0
    assert code.verification_uri == oidc_provider.url("/device")
    assert code.verification_uri_complete is not None
    assert code.user_code in urllib.parse.unquote(code.verification_uri_complete)
    assert code.device_code not in repr(code)


def test_device_flow_backs_off_by_5_s_on_slow_down(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
) -> None:
    """The first wait is cut short (a poll too soon, as after a clock jump): the provider
    answers slow_down and the client asks for interval + 5 s from then on. The test's wait
    sleeps only as long as the provider needs (its increment is 1 s here), so the test
    stays fast; what it checks is what the client asked for."""
    asked: list[float] = []
    backoffs: list[float] = []

    def wait(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) > 1:
            time.sleep(min(seconds, 2.5))  # the provider's interval is 1 + 1 s by then

    def on_code(authorization: DeviceAuthorization) -> None:
        oidc_provider.approve_device(authorization.user_code, "alice")  # before the 1st poll

    with (
        oidc_provider.settings(device_interval=1, slow_down_increment=1),
        SignInSession(settings, store) as session,
    ):
        result = session.device(
            on_code, cancel=threading.Event(), on_slow_down=backoffs.append, wait=wait
        )
    assert backoffs == [6.0]
    assert asked == [1.0, 6.0], asked
    assert result.tokens.claims()["email"] == "alice@acme.test"


def test_device_code_expiry_ends_the_poll_at_expires_in(
    oidc_provider: OIDCProvider, settings: SignInSettings
) -> None:
    started = time.monotonic()
    with (
        oidc_provider.settings(device_interval=1, device_code_ttl=2),
        SignInSession(settings, None) as session,
        pytest.raises(ExpiredError, match="expired before it was approved"),
    ):
        session.device(lambda authorization: None, cancel=threading.Event())
    assert time.monotonic() - started < 5.0


def test_an_expired_device_code_the_provider_reports_is_expired_too(
    oidc_provider: OIDCProvider, settings: SignInSettings
) -> None:
    """The client believes the code lives 30 s; the provider says expired_token after 2 s
    (and invalid_grant once it forgot the code): the client stops either way."""
    from agent.identity.device import request_device_authorization

    with (
        oidc_provider.settings(device_interval=1, device_code_ttl=2),
        ProviderClient(settings.issuer, ca_bundle=settings.ca_bundle) as client,
    ):
        authorization = request_device_authorization(client, CLIENT_ID, SCOPES)
        believed = dataclasses.replace(authorization, expires_in=30.0)
        started = time.monotonic()
        with pytest.raises(ExpiredError) as caught:
            poll_device_token(client, CLIENT_ID, believed, cancel=threading.Event())
    assert caught.value.error == "expired_token"
    assert time.monotonic() - started < 6.0


@pytest.mark.usefixtures("fast_device")
@pytest.mark.parametrize("at_login", [False, True])
def test_a_declined_device_code_is_access_denied_and_nothing_is_stored(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
    at_login: bool,
) -> None:
    denials: list[Future[None]] = []

    def on_code(authorization: DeviceAuthorization) -> None:
        denials.append(
            user.submit(oidc_provider.deny_device, authorization.user_code, at_login=at_login)
        )

    with SignInSession(settings, store) as session, pytest.raises(AccessDeniedError) as caught:
        session.device(on_code, cancel=threading.Event())
    denials[0].result(HTTP_TIMEOUT)
    assert caught.value.error == "access_denied"
    assert "declined" in str(caught.value)
    assert store.load() is None


@pytest.mark.usefixtures("fast_device")
def test_cancel_stops_the_poll_promptly_and_stores_nothing(
    settings: SignInSettings, store: Keychain
) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    with SignInSession(settings, store) as session:
        started = time.monotonic()
        timer.start()
        with pytest.raises(SignInCancelledError, match="nothing was stored"):
            session.device(lambda authorization: None, cancel=cancel)
    assert time.monotonic() - started < 1.0  # the 1 s wait was cut short
    assert store.load() is None


# --------------------------------------------------------------------------- code + PKCE


def test_browser_sign_in_with_pkce_on_a_loopback_listener(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
) -> None:
    pages: list[Future[requests.Response]] = []
    urls: list[str] = []
    on_url = browser_user(oidc_provider, user, "alice", pages)

    def show(url: str) -> None:
        urls.append(url)
        on_url(url)

    with SignInSession(settings, store) as session:
        result = session.browser(show, cancel=threading.Event())
    page = pages[0].result(HTTP_TIMEOUT)

    assert page.status_code == 200 and "You are signed in" in page.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(urls[0]).query))
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["prompt"] == "consent"
    assert query["redirect_uri"].startswith("http://127.0.0.1:")
    assert query["redirect_uri"].endswith("/callback")
    assert result.method is Method.BROWSER and result.stored
    assert store.load() == result.tokens.refresh_token  # prompt=consent kept offline_access
    claims = oidc_provider.verify_id_token(result.tokens.id_token)
    assert claims["email"] == "alice@acme.test" and claims["nonce"] == query["nonce"]


def _tamper(name: str, value: str) -> Callable[[str], str]:
    def rewrite(location: str) -> str:
        parts = urllib.parse.urlsplit(location)
        query = dict(urllib.parse.parse_qsl(parts.query)) | {name: value}
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    return rewrite


def test_a_callback_from_another_issuer_is_refused_and_nothing_stored(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
) -> None:
    pages: list[Future[requests.Response]] = []
    on_url = browser_user(
        oidc_provider, user, "alice", pages, tamper=_tamper("iss", "https://evil.test")
    )
    with SignInSession(settings, store) as session, pytest.raises(CallbackError):
        session.browser(on_url, cancel=threading.Event())
    page = pages[0].result(HTTP_TIMEOUT)
    assert page.status_code == 400 and "could not sign you in" in page.text
    assert store.load() is None


def test_a_callback_with_a_wrong_state_is_refused_and_the_sign_in_goes_on(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
) -> None:
    """A redirect without this sign-in's state (an old tab, another local user, a web page
    probing loopback ports) is answered 400 and neither finishes nor ends the sign-in: the
    user's own redirect, after it, still signs them in (red-team finding, issue 13)."""
    stray: list[requests.Response] = []

    def sign_in(url: str) -> requests.Response:
        redirect = redirect_uri_of(url)
        stray.append(requests.get(f"{redirect}?state=bogus&code=stolen", timeout=HTTP_TIMEOUT))
        stray.append(requests.get(f"{redirect}?code=none", timeout=HTTP_TIMEOUT))
        location = oidc_provider.authorize_in_browser(url, "alice", redirect_uri=redirect)
        return requests.get(location, timeout=HTTP_TIMEOUT)

    pages: list[Future[requests.Response]] = []
    with SignInSession(settings, store) as session:
        result = session.browser(
            lambda url: pages.append(user.submit(sign_in, url)), cancel=threading.Event()
        )
    assert [r.status_code for r in stray] == [400, 400]
    assert all("does not belong to the sign-in" in r.text for r in stray)
    assert pages[0].result(HTTP_TIMEOUT).status_code == 200
    assert result.tokens.claims()["email"] == "alice@acme.test"
    assert store.load() == result.tokens.refresh_token


def test_browser_sign_in_times_out_when_the_browser_never_comes_back(
    settings: SignInSettings,
) -> None:
    from agent.identity.errors import SignInTimeoutError

    with SignInSession(settings, None) as session, pytest.raises(SignInTimeoutError):
        session.browser(lambda url: None, cancel=threading.Event(), timeout=0.5)


# --------------------------------------------------------------------------- silent, sign-out


@pytest.mark.usefixtures("fast_device")
def test_silent_renewal_uses_the_stored_token_and_stores_its_successor(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
) -> None:
    approvals: list[Future[Any]] = []
    with SignInSession(settings, store) as session:
        first = session.device(
            approve(oidc_provider, user, "bob", approvals), cancel=threading.Event()
        )
        renewed = session.silent()
        again = session.silent()
    assert renewed is not None and again is not None
    assert renewed.method is Method.REFRESH and renewed.stored
    assert renewed.tokens.refresh_token not in {None, first.tokens.refresh_token}
    assert again.tokens.refresh_token != renewed.tokens.refresh_token
    assert store.load() == again.tokens.refresh_token  # each successor stored: no reuse
    assert oidc_provider.verify_id_token(again.tokens.id_token)["email"] == "bob@acme.test"


def test_silent_renewal_without_a_usable_token_returns_none_and_drops_a_dead_one(
    settings: SignInSettings, store: Keychain
) -> None:
    with SignInSession(settings, store) as session:
        assert session.silent() is None
        store.store("not-a-refresh-token-the-provider-knows")
        assert session.silent() is None
    assert store.load() is None


@pytest.mark.usefixtures("fast_device")
def test_sign_out_revokes_at_the_provider_and_empties_the_keychain(
    oidc_provider: OIDCProvider,
    settings: SignInSettings,
    store: Keychain,
    user: ThreadPoolExecutor,
) -> None:
    approvals: list[Future[Any]] = []
    with SignInSession(settings, store) as session:
        session.device(approve(oidc_provider, user, "bob", approvals), cancel=threading.Event())
        token = store.load()
        assert token is not None
        report = session.sign_out()
        again = session.sign_out()
    assert report.ok and "revoked" in report.revoke.detail, report
    assert "deleted" in report.keychain.detail
    assert store.load() is None
    assert oidc_provider.refresh(token).error == "invalid_grant"
    assert again.ok and "nothing to revoke" in again.revoke.detail


# --------------------------------------------------------------------------- keychain


@pytest.mark.parametrize(
    "backend",
    [keyring.backends.fail.Keyring(), keyring.backends.null.Keyring()],  # type: ignore[no-untyped-call]
)
def test_no_keychain_backend_is_unavailable(backend: KeyringBackend) -> None:
    entry = Keychain("https://idp.test", "cli", backend=backend)
    with pytest.raises(KeychainUnavailableError, match="no keychain backend"):
        entry.check_available()
    with pytest.raises(KeychainUnavailableError):
        entry.store("token")


def test_a_file_backend_is_refused_even_when_it_works() -> None:
    """keyrings.alt's plaintext (and password-"encrypted") file backends are never used."""

    class PlaintextKeyring(KeyringBackend):
        priority = 1
        stored: dict[tuple[str, str], str] = {}  # noqa: RUF012

        def get_password(self, service: str, username: str) -> str | None:
            return self.stored.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.stored[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            self.stored.pop((service, username))

    PlaintextKeyring.__module__ = "keyrings.alt.file"
    plaintext = PlaintextKeyring()  # type: ignore[no-untyped-call]
    entry = Keychain("https://idp.test", "cli", backend=plaintext)
    assert "keeps secrets in a file" in (insecure_reason(plaintext) or "")
    with pytest.raises(KeychainUnavailableError):
        entry.store("token")
    assert PlaintextKeyring.stored == {}


def test_a_backend_that_is_no_os_keychain_is_refused() -> None:
    """Only keyring's own OS keychain backends hold a refresh token: a third-party plugin
    may keep it anywhere (red-team note, issue 13)."""

    class PluginKeyring(KeyringBackend):
        priority = 1

        def get_password(self, service: str, username: str) -> str | None:
            return None

        def set_password(self, service: str, username: str, password: str) -> None:
            raise AssertionError("must not be asked to store")

        def delete_password(self, service: str, username: str) -> None:
            return None

    PluginKeyring.__module__ = "keyring_sqlite.backend"
    plugin = PluginKeyring()  # type: ignore[no-untyped-call]
    assert "not an OS keychain" in (insecure_reason(plugin) or "")
    with pytest.raises(KeychainUnavailableError):
        Keychain("https://idp.test", "cli", backend=plugin).store("token")


def test_the_secret_service_is_a_real_keychain(store: Keychain) -> None:
    store.check_available()
    assert store.load() is None
    store.store("r1")
    store.store("r2")
    assert store.load() == "r2"
    assert store.delete() is True
    assert store.delete() is False
    assert store.account == account_name(store.account.split(" ")[0], CLIENT_ID)


@pytest.mark.usefixtures("fast_device")
def test_without_a_keychain_the_sign_in_works_and_says_it_stored_nothing(
    oidc_provider: OIDCProvider, settings: SignInSettings, user: ThreadPoolExecutor
) -> None:
    approvals: list[Future[Any]] = []
    with SignInSession(settings, None) as session:
        result = session.device(
            approve(oidc_provider, user, "erin", approvals), cancel=threading.Event()
        )
        assert session.silent() is None
    assert not result.stored and result.store_problem
    assert result.tokens.claims()["email"] == "erin@acme.test"


# --------------------------------------------------------------------------- provider


def test_discovery_naming_another_issuer_is_refused(oidc_provider: OIDCProvider) -> None:
    with (
        ProviderClient(oidc_provider.issuer + "/", ca_bundle=oidc_provider.ca_bundle) as client,
        pytest.raises(DiscoveryError, match="must be identical"),
    ):
        client.discover()


def test_an_unreachable_provider_says_so() -> None:
    with (
        ProviderClient("https://127.0.0.1:9", timeout=2.0) as client,
        pytest.raises(ProviderUnreachableError, match=r"cannot reach the identity provider"),
    ):
        client.discover()


def test_a_provider_outside_the_pinned_ca_fails_tls(oidc_provider: OIDCProvider) -> None:
    with (
        ProviderClient(oidc_provider.issuer) as client,
        pytest.raises(ProviderUnreachableError, match="ca_bundle"),
    ):
        client.discover()


@pytest.mark.parametrize(
    ("issuer", "allow"),
    [("http://idp.test", True), ("http://127.0.0.1:8080", False), ("ftp://idp.test", True)],
)
def test_plain_http_is_refused_except_to_loopback_when_asked(issuer: str, allow: bool) -> None:
    with pytest.raises(InsecureURLError, match="not an https"):
        ProviderClient(issuer, allow_http_loopback=allow)
    ProviderClient("http://127.0.0.1:8080", allow_http_loopback=True).close()


@pytest.mark.parametrize(
    ("overrides", "nonce", "message"),
    [
        ({"aud": "someone-else"}, None, "(?i)audience"),
        ({"iss": "https://evil.test"}, None, "(?i)issuer"),
        ({"exp": 1000, "iat": 900}, None, "(?i)expired"),
        ({"nonce": "theirs"}, "ours", "nonce"),
    ],
)
def test_the_client_checks_the_id_token(
    oidc_provider: OIDCProvider, overrides: dict[str, Any], nonce: str | None, message: str
) -> None:
    token = oidc_provider.sign_id_token(oidc_provider.id_token_claims(**overrides))
    with (
        ProviderClient(oidc_provider.issuer, ca_bundle=oidc_provider.ca_bundle) as client,
        pytest.raises(IDTokenError, match=message),
    ):
        check_id_token(client, token, client_id=CLIENT_ID, nonce=nonce)
    good = oidc_provider.sign_id_token(oidc_provider.id_token_claims(nonce="ours"))
    with ProviderClient(oidc_provider.issuer, ca_bundle=oidc_provider.ca_bundle) as client:
        assert check_id_token(client, good, client_id=CLIENT_ID, nonce="ours")["sub"] == "alice"
