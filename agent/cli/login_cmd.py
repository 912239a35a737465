"""``pullgate login``, ``whoami`` and ``logout``: the user's org sign-in, a thin front over
``agent.identity`` and the agent's ``/v1/identity``.

``login`` first renews silently from the refresh token in the keychain; only when there is
none (or the provider no longer honours it) does it ask the user, with the device flow by
default (it works over SSH and in containers) or ``--browser``. The new refresh token is in
the keychain before the ID token goes to the agent (``SignInSession`` guarantees it), so a
failure to reach the agent never costs the user their stored sign-in.

Exit codes: 0 done; 1 the sign-in, the agent or a step of logout failed, or (``whoami``)
the agent holds no identity for the caller; 2 bad usage or sign-in not configured; 130
cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import webbrowser
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.config.keys import ManagedConfig
from agent.config.parse import ConfigError
from agent.config.sources import load_managed_config
from agent.control.client import ControlError, first_answer
from agent.core.text import printable
from agent.identity.device import DeviceAuthorization
from agent.identity.errors import KeychainUnavailableError, SignInCancelledError, SignInError
from agent.identity.keychain import Keychain
from agent.identity.session import SignInResult, SignInSession, SignInSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 130
CONTROL_TIMEOUT = 10.0
NOT_CONFIGURED = "sign-in is not configured by your organisation (no oidc_issuer)"


def register(commands: Any) -> None:
    login = commands.add_parser(
        "login", help="sign in with your organisation's identity provider (OpenID Connect)"
    )
    how = login.add_mutually_exclusive_group()
    how.add_argument(
        "--browser",
        action="store_true",
        help="sign in in a browser on this machine (authorization code + PKCE)",
    )
    how.add_argument(
        "--device", action="store_true", help="sign in with a code in any browser (the default)"
    )
    login.add_argument(
        "--no-browser", action="store_true", help="never open a browser; print the URL instead"
    )
    login.add_argument(
        "--no-store",
        action="store_true",
        help="do not keep the sign-in in the keychain (sign in again when it expires)",
    )
    login.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long --browser waits for the browser to come back (default 300)",
    )
    _common(login)
    login.set_defaults(run=run_login)

    whoami = commands.add_parser("whoami", help="who the agent knows you as, and until when")
    whoami.add_argument("--json", action="store_true", help="print it as JSON")
    _common(whoami)
    whoami.set_defaults(run=run_whoami)

    logout = commands.add_parser(
        "logout", help="revoke and forget your sign-in (provider, keychain, agent)"
    )
    _common(logout)
    logout.set_defaults(run=run_logout)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="managed config (default: /etc/pullgate/config.json, macOS managed "
        "preferences or the Windows policy key)",
    )
    parser.add_argument("--control", metavar="PATH", help="the agent's control socket")


# --- shared ----------------------------------------------------------------------------


def _say(text: str = "", *, err: bool = False) -> None:
    print(printable(text), file=sys.stderr if err else sys.stdout, flush=True)


def _load_config(args: argparse.Namespace) -> ManagedConfig | None:
    """The managed config, or None when IT configured nothing; ConfigError propagates."""
    return load_managed_config(json_path=Path(args.config) if args.config else None)


def _settings(config: ManagedConfig | None) -> SignInSettings | None:
    if config is None or not config.oidc_issuer or not config.oidc_client_id:
        return None
    return SignInSettings(
        issuer=config.oidc_issuer,
        client_id=config.oidc_client_id,
        scopes=tuple(config.oidc_scopes),
        ca_bundle=config.ca_bundle,
    )


def _keychain(settings: SignInSettings) -> tuple[Keychain | None, str | None]:
    """The keychain to use, or (None, why not)."""
    keychain = Keychain(settings.issuer, settings.client_id)
    try:
        keychain.check_available()
    except KeychainUnavailableError as e:
        return None, str(e)
    return keychain, None


@dataclass(frozen=True)
class _Answer:
    path: Path
    status: int
    body: dict[str, Any]


def _ask_agent(control: str | None, method: str, body: Any = None) -> _Answer:
    """``/v1/identity`` at the first control socket that answers; ControlError otherwise."""
    path, status, answer = first_answer(
        control, method, "/v1/identity", body=body, timeout=CONTROL_TIMEOUT
    )
    return _Answer(path, status, answer if isinstance(answer, dict) else {})


def _refusal(answer: _Answer) -> str:
    message = answer.body.get("message") or f"HTTP {answer.status}"
    reason = answer.body.get("reason")
    return f"{message} (reason: {reason})" if reason else str(message)


def _when(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return "unknown"
    moment = datetime.fromtimestamp(epoch).astimezone()
    left = epoch - time.time()
    if left <= 0:
        return f"{moment:%Y-%m-%d %H:%M %Z} (passed)"
    hours, rest = divmod(int(left), 3600)
    return f"{moment:%Y-%m-%d %H:%M %Z} (in {hours} h {rest // 60} min)"


def _desktop(env: Mapping[str, str]) -> bool:
    """Whether a browser can open here: always on macOS and Windows, on other systems only
    in a graphical session (not over SSH or in a container)."""
    if sys.platform == "darwin" or sys.platform == "win32":
        return True
    else:  # an else, so that mypy --platform darwin|win32 sees no unreachable code
        return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _open(url: str, args: argparse.Namespace) -> None:
    if args.no_browser or not _desktop(os.environ):
        return
    try:
        if webbrowser.open(url):
            _say("(opened in your browser)")
    except webbrowser.Error:
        pass


# --- login -----------------------------------------------------------------------------


def run_login(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args)
    except ConfigError as e:
        _say(f"pullgate login: {e}", err=True)
        return EXIT_USAGE
    settings = _settings(config)
    if settings is None or config is None:
        _say(f"pullgate login: {NOT_CONFIGURED}", err=True)
        return EXIT_USAGE
    methods = tuple(config.sign_in_methods)
    if args.browser and "browser" not in methods:
        _say(
            "pullgate login: your organisation does not allow browser sign-in "
            f"(sign_in_methods: {', '.join(methods)}); run `pullgate login`",
            err=True,
        )
        return EXIT_USAGE
    if args.device and "device" not in methods:
        _say(
            "pullgate login: your organisation does not allow device-code sign-in "
            f"(sign_in_methods: {', '.join(methods)}); run `pullgate login --browser`",
            err=True,
        )
        return EXIT_USAGE
    use_browser = args.browser or (not args.device and "device" not in methods)

    keychain: Keychain | None = None
    if args.no_store:
        _say("Not storing the sign-in (--no-store): you will sign in again when it expires.")
    else:
        keychain, problem = _keychain(settings)
        if keychain is None:
            _say(
                f"pullgate login: {problem}. Signing in WITHOUT storing: you will have to "
                "sign in again when your identity expires.",
                err=True,
            )

    cancel = threading.Event()
    try:
        with SignInSession(settings, keychain) as session:
            result = _silent(session)
            if result is None:
                result = (
                    _browser(session, args, cancel)
                    if use_browser
                    else _device(session, args, cancel)
                )
    except (KeyboardInterrupt, SignInCancelledError):
        cancel.set()
        _say("pullgate login: cancelled; nothing was stored.", err=True)
        return EXIT_CANCELLED
    except SignInError as e:
        _say(f"pullgate login: {e}", err=True)
        return EXIT_FAILED
    return _hand_to_agent(result, args)


def _silent(session: SignInSession) -> SignInResult | None:
    """A renewal from the stored refresh token; None (with a note) when that is not possible
    and the user must sign in."""
    if session.keychain is None:
        return None
    try:
        result = session.silent()
    except SignInError as e:
        _say(f"Could not renew the stored sign-in ({e}); signing in again.", err=True)
        return None
    if result is not None:
        _say("Renewed your sign-in from the keychain (no browser needed).")
    return result


def _device(
    session: SignInSession, args: argparse.Namespace, cancel: threading.Event
) -> SignInResult:
    def show(code: DeviceAuthorization) -> None:
        minutes = max(1, round(code.expires_in / 60))
        _say(f"To sign in, open {code.verification_uri} in a browser and enter the code:")
        _say()
        _say(f"    {code.user_code}")
        _say()
        if code.verification_uri_complete:
            _say(f"Or open: {code.verification_uri_complete}")
            _open(code.verification_uri_complete, args)
        else:
            _open(code.verification_uri, args)
        _say(f"Waiting for you to approve (the code expires in {minutes} min; Ctrl-C cancels)...")

    def slower(interval: float) -> None:
        _say(f"(the provider asked to poll less often: every {interval:.0f} s now)", err=True)

    return session.device(show, cancel=cancel, on_slow_down=slower)


def _browser(
    session: SignInSession, args: argparse.Namespace, cancel: threading.Event
) -> SignInResult:
    def show(url: str) -> None:
        _say("To sign in, open this URL in a browser on this machine:")
        _say()
        _say(f"    {url}")
        _say()
        _open(url, args)
        _say(f"Waiting for the browser (up to {args.timeout:.0f} s; Ctrl-C cancels)...")

    return session.browser(show, cancel=cancel, timeout=args.timeout)


def _hand_to_agent(result: SignInResult, args: argparse.Namespace) -> int:
    claims = result.tokens.claims()
    who = claims.get("email") or claims.get("sub")
    _say(f"Signed in at your identity provider as {who}.")
    if result.stored:
        _say("Your sign-in is stored in the keychain: `pullgate login` renews it silently.")
    elif not args.no_store and result.store_problem:
        _say(f"Your sign-in was NOT stored: {result.store_problem}.", err=True)
    try:
        answer = _ask_agent(args.control, "PUT", {"id_token": result.tokens.id_token})
    except ControlError as e:
        _say(
            f"pullgate login: signed in at the provider, but the agent did not get it: {e}. "
            "Is `pullgate agent` running? Run `pullgate login` again once it is.",
            err=True,
        )
        return EXIT_FAILED
    if answer.status != 200:
        _say(f"pullgate login: the agent refused the sign-in: {_refusal(answer)}", err=True)
        return EXIT_FAILED
    identity = answer.body.get("identity")
    identity = identity if isinstance(identity, dict) else {}
    groups = identity.get("groups") or []
    _say(
        f"The agent accepted {identity.get('email', who)}"
        + (f" (groups: {', '.join(map(str, groups))})" if groups else " (no groups)")
        + f" until {_when(identity.get('expires_at'))}."
    )
    return EXIT_OK


# --- whoami ----------------------------------------------------------------------------


def run_whoami(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args)
    except ConfigError as e:
        _say(f"pullgate whoami: {e}", err=True)
        return EXIT_USAGE
    try:
        answer = _ask_agent(args.control, "GET")
    except ControlError as e:
        _say(f"pullgate whoami: the agent is not reachable: {e}", err=True)
        return EXIT_FAILED
    if answer.status != 200:
        _say(f"pullgate whoami: the agent answered: {_refusal(answer)}", err=True)
        return EXIT_FAILED
    identity = answer.body.get("identity")
    identity = identity if isinstance(identity, dict) else None
    sign_in = answer.body.get("sign_in")
    sign_in = sign_in if isinstance(sign_in, dict) else None
    org = _org(args.control, config)
    settings = _settings(config)
    if settings is None and sign_in and sign_in.get("issuer") and sign_in.get("client_id"):
        settings = SignInSettings(str(sign_in["issuer"]), str(sign_in["client_id"]))
    stored: bool | None = None
    keychain_note = "sign-in not configured"
    if settings is not None:
        keychain, problem = _keychain(settings)
        if keychain is None:
            keychain_note = problem or "unavailable"
        else:
            try:
                stored = keychain.load() is not None
                keychain_note = keychain.backend_name
            except KeychainUnavailableError as e:
                keychain_note = str(e)
    if args.json:
        print(
            json.dumps(
                {
                    "identity": identity,
                    "sign_in": sign_in,
                    "org": org,
                    "stored_sign_in": stored,
                    "keychain": keychain_note,
                    "control": str(answer.path),
                },
                indent=2,
            )
        )
        return EXIT_OK if identity else EXIT_FAILED
    rows: list[tuple[str, object]] = []
    if identity is None:
        rows.append(("signed in", "no: the agent holds no identity for you"))
        if sign_in is None:
            rows.append(("sign-in", NOT_CONFIGURED))
    else:
        name = identity.get("name")
        rows += [
            ("signed in", f"{identity.get('email')}" + (f" ({name})" if name else "")),
            ("groups", ", ".join(map(str, identity.get("groups") or [])) or "none"),
            ("org", org or "none"),
            ("issuer", identity.get("issuer")),
            (
                "accepted",
                f"by the agent for uid {identity.get('uid')} at "
                f"{_when(identity.get('accepted_at'))}",
            ),
            ("expires", _when(identity.get("expires_at"))),
            ("token expires", _when(identity.get("token_expires_at"))),
        ]
    if stored is None:
        rows.append(("stored sign-in", f"unknown ({keychain_note})"))
    else:
        rows.append(("stored sign-in", f"{'yes' if stored else 'no'} (keychain: {keychain_note})"))
    for name, value in rows:
        _say(f"{name + ':':<16}{value}")
    return EXIT_OK if identity else EXIT_FAILED


def _org(control: str | None, config: ManagedConfig | None) -> str | None:
    """The org the agent enforces for (its status), else the managed config's."""
    try:
        _, status, body = first_answer(control, "GET", "/v1/status", timeout=CONTROL_TIMEOUT)
    except ControlError:
        status, body = 0, None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("org"), str):
        return str(body["org"])
    return config.org if config is not None else None


# --- logout ----------------------------------------------------------------------------


def run_logout(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args)
    except ConfigError as e:
        _say(f"pullgate logout: {e}", err=True)
        return EXIT_USAGE
    settings = _settings(config)
    failed = False
    if settings is None:
        _say(f"provider:       skipped: {NOT_CONFIGURED}")
    else:
        keychain, problem = _keychain(settings)
        if keychain is None:
            _say(f"provider:       nothing to revoke ({problem})")
            _say("keychain:       nothing stored")
        else:
            try:
                with SignInSession(settings, keychain) as session:
                    report = session.sign_out()
            except SignInError as e:  # the provider client itself could not be set up
                _say(f"provider:       FAILED: {e}")
                failed = True
            else:
                for name, step in (("provider", report.revoke), ("keychain", report.keychain)):
                    _say(f"{name + ':':<16}{'' if step.ok else 'FAILED: '}{step.detail}")
                failed = not report.ok
    try:
        answer = _ask_agent(args.control, "DELETE")
    except ControlError as e:
        _say(f"agent:          FAILED: the agent is not reachable: {e}")
        failed = True
    else:
        if answer.status != 200:
            _say(f"agent:          FAILED: {_refusal(answer)}")
            failed = True
        elif answer.body.get("forgot"):
            _say("agent:          forgot your identity")
        else:
            _say("agent:          held no identity for you")
    if failed:
        _say("pullgate logout: not every step succeeded (see above).", err=True)
        return EXIT_FAILED
    return EXIT_OK
