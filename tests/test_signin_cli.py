"""`pullgate login | whoami | logout` as real processes, against the real OpenID provider
(tests/oidc), a real Secret Service (tests/keychain.py) and, where the agent matters, a real
`pullgate agent` with a managed config naming the provider.

The test plays the user: it reads the user code (or the browser URL) from the CLI's stdout
and approves it with the harness's headless browser. `--no-browser` keeps the CLI from
opening one. The tests under "with the agent" need the agent's `/v1/identity`; the others
check that the CLI does the right thing when no agent answers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.agent_process import AgentProcess, LineStream, start_agent
from tests.keychain import KeychainProcess
from tests.oidc_provider import CLIENT_ID, OIDCProvider

REPO = Path(__file__).resolve().parent.parent
SCOPES = ["openid", "email", "profile", "groups", "offline_access"]
STEP_TIMEOUT = 20.0
USER_CODE = re.compile(r"^\s{4}([B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4})\s*$")
BROWSER_URL = re.compile(r"^\s{4}(https://\S+)\s*$")


@dataclass
class CLI:
    """How to run `pullgate` for one test: environment, managed config, control socket."""

    env: dict[str, str]
    config: Path
    control: Path
    account: str
    """The keychain account of the refresh token: `ISSUER CLIENT_ID` (agent.identity)."""

    def run(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, *self.options(args[0])],
            capture_output=True,
            text=True,
            env=dict(env if env is not None else self.env),
            cwd=REPO,
            timeout=60,
            check=False,
        )

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", *args, *self.options(args[0])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env if env is not None else self.env),
            cwd=REPO,
        )

    def options(self, command: str) -> list[str]:
        extra = ["--no-browser"] if command == "login" else []
        return [*extra, "--config", str(self.config), "--control", str(self.control)]


def write_config(path: Path, provider: OIDCProvider, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "org": "acme",
        "oidc_issuer": provider.issuer,
        "oidc_client_id": CLIENT_ID,
        "oidc_scopes": SCOPES,
        "ca_bundle": str(provider.ca_bundle),
        "allowed_domains": ["acme.test"],
    }
    config.update(overrides)
    config = {k: v for k, v in config.items() if v is not None}
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (sun_path holds 108 bytes) for control sockets."""
    directory = Path(tempfile.mkdtemp(prefix="pgsi-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cli(
    oidc_provider: OIDCProvider, keychain: KeychainProcess, tmp_path: Path, short_dir: Path
) -> Iterator[CLI]:
    """The CLI with the private keychain, emptied of this provider's entry before and after;
    no agent at `control` (tests that need one use `agent`)."""
    env = {k: v for k, v in keychain.env.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    config = write_config(tmp_path / "config.json", oidc_provider)
    runner = CLI(env, config, short_dir / "c.sock", f"{oidc_provider.issuer} {CLIENT_ID}")
    forget(runner)
    yield runner
    forget(runner)


def forget(cli: CLI) -> None:
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import keyring, sys; keyring.delete_password(*sys.argv[1:])",
            "pullgate",
            cli.account,
        ],
        env=cli.env,
        capture_output=True,
        timeout=30,
        check=False,
    )


def stored_token(cli: CLI) -> str | None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import keyring, sys; print(keyring.get_password(*sys.argv[1:]) or '')",
            "pullgate",
            cli.account,
        ],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip() or None


@pytest.fixture
def agent(cli: CLI, tmp_path: Path) -> Iterator[AgentProcess]:
    """A real agent with the managed config (oidc_issuer, ca_bundle, allowed_domains) and its
    control socket where the CLI looks; its Docker upstream is absent (not needed here)."""
    process = start_agent(
        tmp_path / "agent",
        tmp_path / "no-docker.sock",
        None,
        ["--config", str(cli.config), "--control", str(cli.control)],
        expect_ping_ok=False,
    )
    try:
        yield process
        process.stop()
    finally:
        process.kill()


@pytest.fixture
def fast_device(oidc_provider: OIDCProvider) -> Iterator[None]:
    with oidc_provider.settings(device_interval=1):
        yield


def read_until(stream: LineStream, pattern: re.Pattern[str]) -> str:
    """The first group of the first stdout line matching `pattern`."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        line = stream.next(max(0.1, deadline - time.monotonic()))
        if line is None:
            raise AssertionError(f"stdout ended without {pattern.pattern}: {stream.lines}")
        match = pattern.match(line)
        if match:
            return match.group(1)


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


def finish(process: subprocess.Popen[str], stream: LineStream) -> Finished:
    stream.until_eof(STEP_TIMEOUT)
    assert process.stderr is not None
    stderr = process.stderr.read()
    code = process.wait(STEP_TIMEOUT)
    return Finished(code, "".join(stream.lines), stderr)


def device_login(
    cli: CLI,
    oidc_provider: OIDCProvider,
    account: str,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> Finished:
    """`pullgate login` approved as `account` in the harness's browser."""
    process = cli.start("login", *args, env=env)
    assert process.stdout is not None
    stream = LineStream(process.stdout)
    try:
        code = read_until(stream, USER_CODE)
        oidc_provider.approve_device(code, account)
        return finish(process, stream)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def browser_login(
    cli: CLI, oidc_provider: OIDCProvider, account: str
) -> tuple[Finished, requests.Response]:
    """`pullgate login --browser`, the URL it prints signed into as `account`, and the
    redirect delivered to its loopback listener; the page the listener answered."""
    process = cli.start("login", "--browser")
    assert process.stdout is not None
    stream = LineStream(process.stdout)
    try:
        url = read_until(stream, BROWSER_URL)
        redirect_uri = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))[
            "redirect_uri"
        ]
        location = oidc_provider.authorize_in_browser(url, account, redirect_uri=redirect_uri)
        page = requests.get(location, timeout=STEP_TIMEOUT)
        return finish(process, stream), page
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- no agent needed


def test_login_without_an_issuer_says_sign_in_is_not_configured(cli: CLI, tmp_path: Path) -> None:
    cli.config.write_text(json.dumps({"org": "acme"}))
    result = cli.run("login")
    assert result.returncode == 2
    assert "sign-in is not configured by your organisation (no oidc_issuer)" in result.stderr


def test_login_browser_is_refused_when_the_org_allows_only_device(
    cli: CLI, oidc_provider: OIDCProvider
) -> None:
    write_config(cli.config, oidc_provider, sign_in_methods=["device"])
    result = cli.run("login", "--browser")
    assert result.returncode == 2
    assert "does not allow browser sign-in" in result.stderr


@pytest.mark.usefixtures("fast_device")
def test_ctrl_c_while_waiting_cancels_promptly_and_stores_nothing(
    cli: CLI, oidc_provider: OIDCProvider
) -> None:
    process = cli.start("login")
    assert process.stdout is not None
    stream = LineStream(process.stdout)
    try:
        read_until(stream, USER_CODE)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        done = finish(process, stream)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert time.monotonic() - started < 3.0
    assert done.code == 130, done
    assert "cancelled; nothing was stored" in done.stderr
    assert "Traceback" not in done.stderr
    assert stored_token(cli) is None


@pytest.mark.usefixtures("fast_device")
def test_login_stores_before_the_agent_and_says_when_the_agent_is_missing_then_renews_silently(
    cli: CLI, oidc_provider: OIDCProvider
) -> None:
    first = device_login(cli, oidc_provider, "bob")
    assert first.code == 1, first
    assert "Signed in at your identity provider as bob@acme.test" in first.stdout
    assert "signed in at the provider, but the agent did not get it" in first.stderr
    token = stored_token(cli)
    assert token is not None

    again = cli.run("login")  # no code to approve: a user code here would hang the test
    assert again.returncode == 1, again
    assert "Renewed your sign-in from the keychain" in again.stdout
    assert not any(USER_CODE.match(line) for line in again.stdout.splitlines())
    renewed = stored_token(cli)
    assert renewed not in {None, token}  # the rotated successor was stored


@pytest.mark.usefixtures("fast_device")
@pytest.mark.parametrize("how", ["fail-backend", "--no-store"])
def test_without_a_keychain_login_signs_in_without_storing_and_says_so(
    cli: CLI, oidc_provider: OIDCProvider, how: str
) -> None:
    env = dict(cli.env)
    args: tuple[str, ...] = ()
    if how == "fail-backend":
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    else:
        args = ("--no-store",)
    done = device_login(cli, oidc_provider, "bob", *args, env=env)
    assert "Signed in at your identity provider as bob@acme.test" in done.stdout, done
    if how == "fail-backend":
        assert "the keychain is unavailable" in done.stderr
        assert "Signing in WITHOUT storing" in done.stderr
    else:
        assert "Not storing the sign-in (--no-store)" in done.stdout
    assert stored_token(cli) is None


@pytest.mark.usefixtures("fast_device")
def test_logout_revokes_at_the_provider_and_empties_the_keychain_even_without_an_agent(
    cli: CLI, oidc_provider: OIDCProvider
) -> None:
    device_login(cli, oidc_provider, "bob")
    token = stored_token(cli)
    assert token is not None
    result = cli.run("logout")
    assert "revoked the refresh token at the provider" in result.stdout, result
    assert "deleted the stored sign-in from the keychain" in result.stdout
    assert "agent:          FAILED: the agent is not reachable" in result.stdout
    assert result.returncode == 1
    assert stored_token(cli) is None
    assert oidc_provider.refresh(token).error == "invalid_grant"


def test_whoami_without_an_agent_says_so(cli: CLI) -> None:
    result = cli.run("whoami")
    assert result.returncode == 1
    assert "the agent is not reachable" in result.stderr


# --------------------------------------------------------------------------- with the agent


@pytest.mark.usefixtures("fast_device", "agent")
def test_login_whoami_logout_with_the_agent(cli: CLI, oidc_provider: OIDCProvider) -> None:
    done = device_login(cli, oidc_provider, "alice")
    assert done.code == 0, done
    assert "The agent accepted alice@acme.test (groups: developers, platform)" in done.stdout

    who = cli.run("whoami")
    assert who.returncode == 0, who
    assert "alice@acme.test" in who.stdout and "developers, platform" in who.stdout
    assert "org:            acme" in who.stdout
    assert "stored sign-in: yes" in who.stdout
    as_json = json.loads(cli.run("whoami", "--json").stdout)
    assert as_json["identity"]["email"] == "alice@acme.test"
    assert as_json["identity"]["uid"] == os.geteuid()
    assert as_json["stored_sign_in"] is True
    assert as_json["sign_in"]["issuer"] == oidc_provider.issuer

    out = cli.run("logout")
    assert out.returncode == 0, out
    assert "agent:          forgot your identity" in out.stdout
    gone = cli.run("whoami")
    assert gone.returncode == 1 and "no: the agent holds no identity for you" in gone.stdout
    assert "stored sign-in: no" in gone.stdout


@pytest.mark.usefixtures("agent")
def test_browser_login_with_the_agent(cli: CLI, oidc_provider: OIDCProvider) -> None:
    done, page = browser_login(cli, oidc_provider, "bob")
    assert page.status_code == 200 and "You are signed in" in page.text
    assert done.code == 0, done
    assert "The agent accepted bob@acme.test (groups: developers)" in done.stdout
    assert stored_token(cli) is not None


@pytest.mark.usefixtures("fast_device", "agent")
def test_the_agents_refusal_is_shown_with_its_reason(cli: CLI, oidc_provider: OIDCProvider) -> None:
    done = device_login(cli, oidc_provider, "carol")  # contractor.test is not allowed
    assert done.code == 1, done
    assert "the agent refused the sign-in" in done.stderr
    assert "(reason: domain_not_allowed)" in done.stderr
