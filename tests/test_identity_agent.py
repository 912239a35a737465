"""Org sign-in on the agent's side (issue 13), end to end with real parts: ID tokens from the
real OpenID provider of tests/oidc (and forged ones, signed with its real keys or with keys
of our own), handed to a real `pullgate agent` over its control socket as root and as a
second OS user created for the test, then pulls through the real shim with the real docker
CLI against the private dockerd.

Every refusal is checked three ways: the HTTP status and `reason` of `PUT /v1/identity`,
the agent's `sign-in` failure notice on stderr, and the audit record, both carrying the same
reason. The key-rotation and provider-down cases run against private providers, so the
session provider's keys never change under other tests; the identity expiry is tested with
the agent's own `IdentityStore` on an event loop here (`identity_max_age` has a 5 minute
minimum in the managed config).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import grp
import hashlib
import hmac
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.core.events import Event, NoticeEvent
from agent.core.peer import PeerInfo
from agent.daemon.identities import UNKNOWN_KID_INTERVAL, IdentityStore, VerifierSettings
from bench.realdocker import DockerEnv
from tests.agent_process import (
    DENIED_REPOSITORY,
    AgentProcess,
    LineStream,
    Reporter,
    describe,
    docker_via,
    docker_with,
    images_of,
    reap,
    shim_policy,
    skip_or_fail,
    start_agent,
    unix_request,
)
from tests.oidc_provider import (
    CLIENT_ID,
    OIDCProvider,
    b64url,
    compact_jws,
    missing_requirements,
    start_oidc_provider,
    stop_oidc_provider,
)

REPO = Path(__file__).resolve().parent.parent
CURL = shutil.which("curl")
RUNUSER = shutil.which("runuser")
TIMEOUT = 15.0
DENIED = "someuser/tool"
DENIED_MESSAGE = "Error response from daemon: pullgate:"

PLATFORM_RULE = {
    "id": "platform-tools",
    "match": "someuser/tool",
    "action": "allow",
    "groups": ["platform"],
}
"""someuser/tool is community (denied by shim_policy) except for members of `platform`."""


# --------------------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(0.05)


def real_token(provider: OIDCProvider, account: str) -> str:
    """A fresh ID token for `account` from the provider's real authorization code flow with
    PKCE, as `pullgate login --browser` gets one. With a nonce: oidc-provider's ID tokens
    carry no jti, so two sign-ins of one user in the same second would otherwise be the
    very same bytes (RS256 signatures are deterministic), which the agent rightly takes
    for a replay."""
    return provider.code_login(account, nonce=secrets.token_urlsafe(16)).field("id_token")


def _foreign_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_kid(provider: OIDCProvider) -> str:
    return provider.signing_kids()["RS256"]


@dataclass(frozen=True)
class OSUser:
    """A second OS user made for the test (removed afterwards)."""

    name: str
    uid: int
    gid: int
    home: Path

    def run(
        self, argv: list[str], *, env: Mapping[str, str] | None = None, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        assert RUNUSER is not None
        return subprocess.run(
            [RUNUSER, "-u", self.name, "--", *argv],
            input=input,
            capture_output=True,
            env=dict(env) if env is not None else None,
            timeout=60,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )


def create_user(prefix: str) -> OSUser:
    if os.geteuid() != 0 or RUNUSER is None or shutil.which("useradd") is None:
        skip_or_fail("needs root, useradd and runuser to act as a second OS user")
    name = f"{prefix}{secrets.token_hex(4)}"
    argv = ["useradd", "--create-home", "--shell", "/bin/sh"]
    with contextlib.suppress(KeyError):
        grp.getgrnam("docker")
        argv += ["--groups", "docker"]  # the shim's socket is 0660 root:docker
    subprocess.run([*argv, name], check=True, capture_output=True, timeout=30)
    entry = pwd.getpwnam(name)
    return OSUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def remove_user(user: OSUser) -> None:
    done = subprocess.run(
        ["userdel", "--remove", user.name], capture_output=True, text=True, timeout=30, check=False
    )
    with contextlib.suppress(KeyError):
        pwd.getpwnam(user.name)
        raise AssertionError(f"could not remove test user {user.name}: {done.stderr}")


@contextlib.contextmanager
def os_user(prefix: str) -> Iterator[OSUser]:
    user = create_user(prefix)
    try:
        yield user
    finally:
        remove_user(user)


class SignInAgent:
    """A running agent with sign-in configured, its control socket, audit log and helpers
    to talk to it as root or as another OS user."""

    def __init__(self, agent: AgentProcess, base: Path) -> None:
        self.agent = agent
        self.base = base
        self.workdir = agent.socket_path.parent
        self.control = self.workdir / "control.sock"
        self.audit_dir = self.workdir / "audit"

    # -- the control API ----------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        user: OSUser | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One request as root (in-process) or as `user` (curl under runuser)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if user is None:
            status, got, raw = unix_request(
                self.control, method, path, body=body, headers=headers, timeout=TIMEOUT
            )
        else:
            assert CURL is not None
            argv = [CURL, "-sS", "-i", "--unix-socket", str(self.control), "-X", method]
            argv += ["-H", "Expect:"]
            if body is not None:
                argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
            result = user.run([*argv, f"http://localhost{path}"], input=body)
            assert result.returncode == 0, result.stderr.decode(errors="replace")
            head, _, raw = result.stdout.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            got = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return status, got, parsed

    def put_token(self, token: str, *, user: OSUser | None = None) -> tuple[int, Any]:
        status, _, body = self.request(
            "PUT", "/v1/identity", json.dumps({"id_token": token}).encode(), user=user
        )
        return status, body

    def identity(self, *, user: OSUser | None = None) -> Any:
        status, _, body = self.request("GET", "/v1/identity", user=user)
        assert status == 200, body
        return body

    def status(self, *, user: OSUser | None = None) -> dict[str, Any]:
        status, _, body = self.request("GET", "/v1/status", user=user)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    # -- what it recorded ---------------------------------------------------------------

    def audit_records(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in sorted(self.audit_dir.glob("audit-*.jsonl")):
            text = path.read_text(errors="replace")
            for line in text[: text.rfind("\n") + 1].splitlines():
                if line.strip():
                    found.append(json.loads(line))
        return found

    def marks(self) -> tuple[int, int]:
        return self.agent.mark(), len(self.audit_records())

    def notice(
        self, since: int, matches: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((r for r in self.agent.records(since) if matches(r)), None)

        try:
            found: dict[str, Any] = wait_for(find, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; agent stderr:\n{self.agent.stderr_tail()}") from None
        return found

    def audit(
        self, since: int, matches: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((r for r in self.audit_records()[since:] if matches(r)), None)

        try:
            found: dict[str, Any] = wait_for(find, what)
        except AssertionError as e:
            records = json.dumps(self.audit_records()[since:], indent=1)[-3000:]
            raise AssertionError(f"{e}; audit records since: {records}") from None
        return found

    def expect_refusal(
        self,
        token: str | None,
        reason: str,
        *,
        status: int = 403,
        user: OSUser | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]:
        """PUT `token` (or the raw `body`), expect `status` with `reason`, a `sign-in`
        failure notice and audit record with that reason, and no change of who the
        caller is signed in as."""
        uid = 0 if user is None else user.uid
        before = self.identity(user=user)["identity"]
        line, count = self.marks()
        if body is None:
            assert token is not None
            body = json.dumps({"id_token": token}).encode()
        got, _, answer = self.request("PUT", "/v1/identity", body, user=user)
        assert (got, answer.get("reason")) == (status, reason), answer
        assert answer["message"].startswith("sign-in refused: "), answer
        notice = self.notice(
            line,
            lambda r: (
                r.get("action") == "sign-in"
                and r.get("outcome") == "failure"
                and r.get("details", {}).get("reason") == reason
            ),
            f"sign-in failure notice ({reason})",
        )
        assert notice["peer"]["uid"] == uid
        assert notice["severity"] == "warning"
        assert f"({reason})" in notice["reason"]
        record = self.audit(
            count,
            lambda r: r.get("event.action") == "sign-in" and r.get("event.outcome") == "failure",
            f"sign-in failure audit record ({reason})",
        )
        assert record["pullgate.details"]["reason"] == reason, record
        assert record["event.category"] == ["authentication"], record
        assert record["user.id"] == str(uid), record
        assert "pullgate.identity" not in record, record  # nobody signed in by this
        assert self.identity(user=user)["identity"] == before
        assert isinstance(answer, dict)
        return answer


def start_sign_in_agent(
    base: Path,
    upstream: Path,
    provider: OIDCProvider,
    policy: Mapping[str, Any],
    **config: Any,
) -> SignInAgent:
    """An agent whose managed config points at `provider`; its sockets reachable by other
    users (pytest's temp directories are 0700: `base` is a 0755 directory under /tmp)."""
    config_path = base / f"config-{secrets.token_hex(4)}.json"
    settings: dict[str, Any] = {
        "oidc_issuer": provider.issuer,
        "oidc_client_id": CLIENT_ID,
        "allowed_domains": ["acme.test"],
    }
    if provider.ca_bundle is not None:
        settings["ca_bundle"] = str(provider.ca_bundle)
    settings.update(config)
    config_path.write_text(json.dumps(settings, indent=2))
    agent = start_agent(base, upstream, policy, ["--config", str(config_path)])
    try:
        workdir = agent.socket_path.parent
        assert workdir.parent == base, "socket moved to a scratch dir: base path too long"
        workdir.chmod(0o755)
        shim = agent.socket_path.stat()
        try:
            docker_gid = grp.getgrnam("docker").gr_gid
        except KeyError:
            docker_gid = None
        if shim.st_gid != docker_gid or shim.st_mode & 0o060 != 0o060:
            agent.socket_path.chmod(0o666)
        return SignInAgent(agent, base)
    except BaseException:
        agent.kill()
        raise


@pytest.fixture(scope="module")
def short_base() -> Iterator[Path]:
    """A directory under /tmp that other users may traverse, for the agents' sockets."""
    path = Path(tempfile.mkdtemp(prefix="pgid-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def signin(
    docker_env: DockerEnv, oidc_provider: OIDCProvider, short_base: Path, report: Reporter
) -> Iterator[SignInAgent]:
    """The module's agent: sign-in with the session provider, allowed_domains [acme.test],
    someuser/tool allowed to the `platform` group only."""
    ctx = start_sign_in_agent(
        short_base, docker_env.socket_path, oidc_provider, shim_policy(rules=[PLATFORM_RULE])
    )
    report(f"identity: agent answered /_ping {ctx.agent.ready_seconds:.2f} s after start")
    try:
        yield ctx
        ctx.agent.stop()
    finally:
        ctx.agent.kill()


@pytest.fixture(scope="module")
def other_user() -> Iterator[OSUser]:
    with os_user("pgid") as user:
        yield user


@pytest.fixture
def private_provider(tmp_path: Path) -> Iterator[OIDCProvider]:
    """A provider of this test's own (rotating or stopping it disturbs nobody else)."""
    problems = missing_requirements()
    if problems:
        skip_or_fail("OpenID provider unavailable: " + "; ".join(problems))
    provider = start_oidc_provider(tmp_path / "oidc")
    try:
        yield provider
    finally:
        stop_oidc_provider(provider)


def user_docker_env(env: DockerEnv, agent: AgentProcess, user: OSUser) -> dict[str, str]:
    """The docker CLI's environment for `user` through the shim (their own config dir)."""
    environ = dict(env.env)
    environ.update(
        DOCKER_HOST=agent.docker_host,
        DOCKER_CONFIG=str(user.home / ".docker"),
        HOME=str(user.home),
    )
    return environ


def docker_as(
    user: OSUser, env: DockerEnv, agent: AgentProcess, *args: str
) -> subprocess.CompletedProcess[str]:
    assert RUNUSER is not None
    environ = user_docker_env(env, agent, user)
    return docker_with(environ, "-u", user.name, "--", env.docker_cli, *args, cli=RUNUSER)


# --------------------------------------------------------------------------- sign-in accepted


def test_a_real_device_flow_token_signs_in_the_caller_and_only_the_caller(
    signin: SignInAgent, oidc_provider: OIDCProvider, other_user: OSUser
) -> None:
    with oidc_provider.settings(device_interval=1):
        token = oidc_provider.device_login("alice").field("id_token")
    line, count = signin.marks()
    status, body = signin.put_token(token)
    assert status == 200, body
    me = body["identity"]
    assert me["uid"] == 0
    assert me["email"] == "alice@acme.test"
    assert me["subject"] == "alice"
    assert me["groups"] == ["developers", "platform"]
    assert me["issuer"] == oidc_provider.issuer
    claims = oidc_provider.verify_id_token(token)
    assert me["token_expires_at"] == claims["exp"]
    # identity_max_age (8h by default) after acceptance, not the token's exp.
    assert me["expires_at"] == pytest.approx(me["accepted_at"] + 8 * 3600)
    assert abs(me["accepted_at"] - time.time()) < 30

    notice = signin.notice(
        line,
        lambda r: r.get("action") == "sign-in" and r.get("outcome") == "success",
        "sign-in success notice",
    )
    assert notice["details"]["email"] == "alice@acme.test"
    assert notice["peer"]["uid"] == 0
    record = signin.audit(
        count,
        lambda r: r.get("event.action") == "sign-in" and r.get("event.outcome") == "success",
        "sign-in success audit record",
    )
    assert record["pullgate.identity"] == "alice@acme.test"
    assert record["event.category"] == ["authentication"]
    assert record["user.id"] == "0"

    mine = signin.identity()
    assert mine["identity"] == me
    assert mine["sign_in"]["issuer"] == oidc_provider.issuer
    assert mine["sign_in"]["client_id"] == CLIENT_ID
    identity = signin.status()["identity"]
    assert identity["configured"] is True
    assert identity["keys"]["state"] == "ok"
    assert rsa_kid(oidc_provider) in identity["keys"]["key_ids"]
    assert identity["you"] == me
    assert [u["email"] for u in identity["users"] if u["uid"] == 0] == ["alice@acme.test"]

    # Another OS user sees neither root's sign-in nor the list of users.
    theirs = signin.identity(user=other_user)
    assert theirs["identity"] is None
    assert theirs["sign_in"]["issuer"] == oidc_provider.issuer
    their_status = signin.status(user=other_user)
    assert their_status["caller"] == {"uid": other_user.uid}
    assert their_status["identity"]["you"] is None
    assert "users" not in their_status["identity"]
    assert "alice@acme.test" not in json.dumps(their_status)


def test_a_token_is_accepted_once_whoever_presents_it_again(
    signin: SignInAgent, oidc_provider: OIDCProvider, other_user: OSUser
) -> None:
    token = real_token(oidc_provider, "alice")
    status, body = signin.put_token(token)
    assert status == 200, body
    signin.expect_refusal(token, "replayed")
    signin.expect_refusal(token, "replayed", user=other_user)
    assert signin.identity(user=other_user)["identity"] is None


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _padded(token: str) -> str:
    """The same signature with base64 padding, which PyJWT accepts (AWS ALB sends it)."""
    signature = token.rsplit(".", 1)[1]
    padding = "=" * (-len(signature) % 4)
    assert padding, "a 256-byte RS256 signature needs padding"
    return token + padding


def _ecdsa_twin(token: str) -> str:
    """An ES256 token's other valid signature: (r, s) -> (r, n - s) verifies as well."""
    signed, signature = token.rsplit(".", 1)
    raw = _b64decode(signature)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    return f"{signed}.{b64url(r + (P256_ORDER - s).to_bytes(32, 'big'))}"


@pytest.mark.parametrize(
    ("alg", "respell"),
    [
        pytest.param("RS256", _padded, id="RS256 signature with base64 padding"),
        pytest.param("ES256", _ecdsa_twin, id="ES256 twin signature (r, n - s)"),
    ],
)
def test_a_respelled_signature_is_still_a_replay(
    signin: SignInAgent,
    oidc_provider: OIDCProvider,
    other_user: OSUser,
    alg: str,
    respell: Callable[[str], str],
) -> None:
    """A token someone else saw must not become "new" by writing its signature another
    way that still verifies: the replay check keys on what the provider signed."""
    token = _forged(oidc_provider, alg=alg)
    assert signin.put_token(token)[0] == 200
    variant = respell(token)
    assert variant != token
    assert oidc_provider.verify_id_token(variant)["sub"] == "alice"  # it does verify
    signin.expect_refusal(variant, "replayed", user=other_user)
    assert signin.identity(user=other_user)["identity"] is None


def test_a_non_canonical_signature_is_malformed(
    signin: SignInAgent, oidc_provider: OIDCProvider
) -> None:
    """Unused low bits of the last base64 character decode to the same bytes; PyJWT
    refuses such a spelling outright (not a bypass of the replay check either)."""
    token = _forged(oidc_provider)
    assert signin.put_token(token)[0] == 200
    signed, signature = token.rsplit(".", 1)
    raw = _b64decode(signature)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = next(c for c in alphabet if c != signature[-1] and _b64decode(signature[:-1] + c) == raw)
    signin.expect_refusal(f"{signed}.{signature[:-1]}{twin}", "malformed")


# --------------------------------------------------------------------------- tokens refused


def _now() -> int:
    return int(time.time())


def _forged(provider: OIDCProvider, alg: str = "RS256", **claims: Any) -> str:
    """Claims of alice's (with a fresh nonce, so no two are alike) signed with the
    provider's real key: an override of None removes the claim."""
    merged = provider.id_token_claims(nonce=secrets.token_urlsafe(12), **claims)
    return provider.sign_id_token({k: v for k, v in merged.items() if v is not None}, alg=alg)


def _expired(p: OIDCProvider) -> str:
    return _forged(p, iat=_now() - 700, exp=_now() - 120)


def _nbf_ahead(p: OIDCProvider) -> str:
    return _forged(p, nbf=_now() + 600)


def _iat_ahead(p: OIDCProvider) -> str:
    return _forged(p, iat=_now() + 600, exp=_now() + 1200)


def _other_audience(p: OIDCProvider) -> str:
    return _forged(p, aud="another-app")


def _azp_other(p: OIDCProvider) -> str:
    return _forged(p, azp="another-app")


def _audiences_without_azp(p: OIDCProvider) -> str:
    return _forged(p, aud=[CLIENT_ID, "another-app"])


def _other_issuer(p: OIDCProvider) -> str:
    return _forged(p, iss="https://idp.evil.test")


def _unknown_key(p: OIDCProvider) -> str:
    key = _foreign_rsa_key()
    return jwt.encode(p.id_token_claims(), key, algorithm="RS256", headers={"kid": "forged-1"})


def _foreign_key_providers_kid(p: OIDCProvider) -> str:
    key = _foreign_rsa_key()
    return jwt.encode(p.id_token_claims(), key, algorithm="RS256", headers={"kid": rsa_kid(p)})


def _no_kid(p: OIDCProvider) -> str:
    """The provider's own key, but no kid: with two keys published, which one is meant?"""
    key = p.signing_key("RS256").key
    return jwt.encode(p.id_token_claims(nonce=secrets.token_urlsafe(12)), key, algorithm="RS256")


def _embedded_jwk(p: OIDCProvider) -> str:
    """Signed by our key, which the header carries itself (`jwk`, RFC 7515 4.1.3): the
    agent must trust only the provider's JWKS."""
    key = _foreign_rsa_key()
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    headers = {"kid": "embedded-1", "jwk": public}
    return jwt.encode(p.id_token_claims(), key, algorithm="RS256", headers=headers)


def _alg_none(p: OIDCProvider) -> str:
    return compact_jws({"alg": "none", "typ": "JWT", "kid": rsa_kid(p)}, p.id_token_claims())


def _hs256_public_key(p: OIDCProvider) -> str:
    """The classic confusion: HMAC keyed with the bytes of the provider's PUBLIC key."""
    public = p.signing_key("RS256").key.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa_kid(p)}
    unsigned = compact_jws(header, p.id_token_claims()).rsplit(".", 1)[0]
    mac = hmac.new(pem, unsigned.encode("ascii"), hashlib.sha256).digest()
    return f"{unsigned}.{b64url(mac)}"


def _es256_under_rsa_kid(p: OIDCProvider) -> str:
    ec = p.signing_key("ES256")
    return jwt.encode(p.id_token_claims(), ec.key, algorithm="ES256", headers={"kid": rsa_kid(p)})


def _tampered(p: OIDCProvider) -> str:
    head, _, signature = _forged(p).split(".")
    evil = b64url(json.dumps(p.id_token_claims(groups=["platform", "admins"])).encode())
    return f"{head}.{evil}.{signature}"


def _stale(p: OIDCProvider) -> str:
    return _forged(p, iat=_now() - 1800, exp=_now() + 1800)


def _groups_not_a_list(p: OIDCProvider) -> str:
    return _forged(p, groups="platform")


def _no_email(p: OIDCProvider) -> str:
    return _forged(p, email=None)


def _carol(p: OIDCProvider) -> str:
    return real_token(p, "carol")


def _dave(p: OIDCProvider) -> str:
    return real_token(p, "dave")


def _garbage(p: OIDCProvider) -> str:
    return "not-a-jwt"


def _oversize(p: OIDCProvider) -> str:
    return _forged(p, padding="x" * 20_000)


def _not_ascii(p: OIDCProvider) -> str:
    return _forged(p)[:-2] + "é"


REFUSED: list[tuple[str, Callable[[OIDCProvider], str], str]] = [
    ("expired", _expired, "expired"),
    ("nbf in the future", _nbf_ahead, "not_yet_valid"),
    ("iat in the future", _iat_ahead, "not_yet_valid"),
    ("another audience", _other_audience, "wrong_audience"),
    ("azp of another client", _azp_other, "wrong_audience"),
    ("two audiences without azp", _audiences_without_azp, "wrong_audience"),
    ("another issuer", _other_issuer, "wrong_issuer"),
    ("a key the provider never published", _unknown_key, "unknown_key"),
    ("another key under the provider's kid", _foreign_key_providers_kid, "bad_signature"),
    ("our key embedded in the header", _embedded_jwk, "unknown_key"),
    ("no kid while the provider has two keys", _no_kid, "malformed"),
    ("alg none", _alg_none, "bad_algorithm"),
    ("HS256 keyed with the public key", _hs256_public_key, "bad_algorithm"),
    ("ES256 under the RSA key's kid", _es256_under_rsa_kid, "bad_algorithm"),
    ("claims changed after signing", _tampered, "bad_signature"),
    ("stale: issued 30 min ago", _stale, "stale"),
    ("groups not a list", _groups_not_a_list, "bad_groups"),
    ("no email", _no_email, "no_email"),
    ("carol@contractor.test: domain not allowed", _carol, "domain_not_allowed"),
    ("dave: email not verified", _dave, "email_not_verified"),
    ("garbage", _garbage, "malformed"),
    ("oversize token", _oversize, "malformed"),
    ("not ASCII", _not_ascii, "malformed"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [pytest.param(m, r, id=name) for name, m, r in REFUSED]
)
def test_refused_token(
    signin: SignInAgent,
    oidc_provider: OIDCProvider,
    make: Callable[[OIDCProvider], str],
    reason: str,
) -> None:
    signin.expect_refusal(make(oidc_provider), reason)


def test_the_same_forging_with_nothing_wrong_is_accepted(
    signin: SignInAgent, oidc_provider: OIDCProvider, other_user: OSUser
) -> None:
    """The refusals above are for their reason alone: the same forging, with nothing
    wrong, is accepted (as the other user, who then signs out again)."""
    token = _forged(oidc_provider, sub="bob", email="bob@acme.test", groups=["developers"])
    status, body = signin.put_token(token, user=other_user)
    assert status == 200, body
    assert body["identity"]["uid"] == other_user.uid
    status, _, gone = signin.request("DELETE", "/v1/identity", user=other_user)
    assert (status, gone) == (200, {"identity": None, "forgot": True})


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"not json", 400, id="not JSON"),
        pytest.param(b"[]", 400, id="a list"),
        pytest.param(b'{"id_token": 7}', 400, id="id_token a number"),
        pytest.param(b'{"id_token": ""}', 400, id="id_token empty"),
        pytest.param(b'{"token": "x"}', 400, id="wrong key"),
        pytest.param(b'{"id_token": "a.b.c", "id_token": "d.e.f"}', 400, id="duplicate key"),
    ],
)
def test_a_body_that_is_not_exactly_an_id_token_is_refused(
    signin: SignInAgent, body: bytes, status: int
) -> None:
    before = signin.identity()["identity"]
    marks = signin.marks()
    got, _, answer = signin.request("PUT", "/v1/identity", body)
    assert (got, answer["reason"]) == (status, "malformed"), answer
    assert signin.identity()["identity"] == before
    # Audited like a refused token.
    signin.audit(
        marks[1],
        lambda r: (
            r.get("event.action") == "sign-in"
            and r.get("event.outcome") == "failure"
            and r.get("pullgate.details", {}).get("reason") == "malformed"
        ),
        "the audit record of the refused body",
    )


def test_extra_keys_are_refused_and_do_not_spend_the_token(
    signin: SignInAgent, oidc_provider: OIDCProvider, other_user: OSUser
) -> None:
    token = real_token(oidc_provider, "bob")
    body = json.dumps({"id_token": token, "groups": ["platform"]}).encode()
    got, _, answer = signin.request("PUT", "/v1/identity", body, user=other_user)
    assert (got, answer["reason"]) == (400, "malformed"), answer
    assert signin.identity(user=other_user)["identity"] is None
    status, accepted = signin.put_token(token, user=other_user)
    assert status == 200, accepted
    assert accepted["identity"]["groups"] == ["developers"]  # the token's, never the body's
    status, _, gone = signin.request("DELETE", "/v1/identity", user=other_user)
    assert (status, gone) == (200, {"identity": None, "forgot": True})


def test_an_oversize_body_is_refused_unread(signin: SignInAgent) -> None:
    """Refused on its declared length, before a byte of it is read: the head alone gets
    the 413 (a client that goes on sending meets a closed socket, which is the point)."""
    head = (
        "PUT /v1/identity HTTP/1.1\r\nHost: pullgate\r\nContent-Type: application/json\r\n"
        f"Content-Length: {80 * 1024}\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(signin.control))
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"too large" in answer


@pytest.fixture(scope="module")
def limited_user() -> Iterator[OSUser]:
    """A user that spends its sign-in attempts; kept until the module ends, so that no
    later test's new user gets its uid (useradd reuses freed uids) and its spent limit."""
    with os_user("pgrl") as user:
        yield user


def test_sign_in_attempts_are_rate_limited_per_user_but_not_for_root(
    signin: SignInAgent, limited_user: OSUser
) -> None:
    user = limited_user
    for _ in range(10):
        got, _ = signin.put_token("not-a-jwt", user=user)
        assert got == 403
    got, headers, answer = signin.request(
        "PUT", "/v1/identity", b'{"id_token": "not-a-jwt"}', user=user
    )
    assert got == 429, answer
    assert int(headers["retry-after"]) > 0
    for _ in range(11):
        assert signin.put_token("not-a-jwt")[0] == 403


class EventStream:
    """`GET /v1/events` read by curl (as root or as `user`): the SSE frames as they come."""

    def __init__(self, control: Path, user: OSUser | None = None) -> None:
        assert CURL is not None and RUNUSER is not None
        argv = [CURL, "-sN", "--unix-socket", str(control), "http://localhost/v1/events"]
        if user is not None:
            argv = [RUNUSER, "-u", user.name, "--", *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # runuser's curl is ended with it, by the group's id
        )
        assert self.proc.stdout is not None
        self.lines = LineStream(self.proc.stdout)
        first = self.lines.next(TIMEOUT)
        assert first is not None and first.startswith(": pullgate control API"), first

    def until(self, matches: Callable[[str, dict[str, Any]], bool]) -> list[tuple[str, Any]]:
        """Frames (event name, data) up to and including the first that `matches`."""
        frames: list[tuple[str, Any]] = []
        name = ""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self.lines.next(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"no matching frame in time; frames: {frames}") from None
            assert line is not None, f"stream ended; frames: {frames}"
            if line.startswith("event: "):
                name = line.removeprefix("event: ").strip()
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                frames.append((name, data))
                if matches(name, data):
                    return frames

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        reap(self.proc)


def test_identity_events_reach_only_their_user_and_root(
    signin: SignInAgent, oidc_provider: OIDCProvider
) -> None:
    with os_user("pgev") as user:
        theirs = EventStream(signin.control, user)
        roots = EventStream(signin.control)
        try:
            assert signin.put_token(real_token(oidc_provider, "alice"))[0] == 200
            signin.expect_refusal(_expired(oidc_provider), "expired")
            assert signin.put_token(real_token(oidc_provider, "bob"), user=user)[0] == 200
            status, _, _ = signin.request("DELETE", "/v1/identity", user=user)
            assert status == 200

            def their_sign_out(name: str, data: dict[str, Any]) -> bool:
                peer = data.get("peer") or {}
                return (
                    name == "identity"
                    and data["action"] == "sign-out"
                    and (peer.get("uid") == user.uid)
                )

            seen = [
                (n, d["action"], d["outcome"], (d.get("peer") or {}).get("uid"))
                for n, d in theirs.until(their_sign_out)
                if n == "identity"
            ]
            assert seen == [
                ("identity", "sign-in", "success", user.uid),
                ("identity", "sign-out", "success", user.uid),
            ]
            seen = [
                (n, d["action"], d["outcome"], (d.get("peer") or {}).get("uid"))
                for n, d in roots.until(their_sign_out)
                if n == "identity"
            ]
            assert seen == [
                ("identity", "sign-in", "success", 0),
                ("identity", "sign-in", "failure", 0),
                ("identity", "sign-in", "success", user.uid),
                ("identity", "sign-out", "success", user.uid),
            ]
        finally:
            theirs.close()
            roots.close()


# --------------------------------------------------------------------------- two OS users


@pytest.mark.usefixtures("seeded", "denied_image_absent")
def test_two_os_users_signed_in_as_different_people_get_different_decisions(
    signin: SignInAgent,
    oidc_provider: OIDCProvider,
    other_user: OSUser,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
) -> None:
    agent = signin.agent
    status, root_in = signin.put_token(real_token(oidc_provider, "alice"))
    assert status == 200, root_in
    status, bob_in = signin.put_token(real_token(oidc_provider, "bob"), user=other_user)
    assert status == 200, bob_in
    assert bob_in["identity"]["uid"] == other_user.uid
    users = {u["uid"]: u["email"] for u in signin.status()["identity"]["users"]}
    assert users == {0: "alice@acme.test", other_user.uid: "bob@acme.test"}

    line, count = signin.marks()
    denied = docker_as(other_user, docker_env, agent, "pull", DENIED)
    assert denied.returncode != 0, describe(denied, agent)
    assert DENIED_MESSAGE in denied.stderr, describe(denied, agent)
    assert "docker.io/someuser/tool:latest" in denied.stderr
    assert images_of(docker_env, DENIED_REPOSITORY, denied_image_ids) == []

    allowed = docker_via(agent, docker_env, "pull", DENIED)
    assert allowed.returncode == 0, describe(allowed, agent)
    assert images_of(docker_env, DENIED_REPOSITORY, denied_image_ids) != []

    # Still denied for bob while root holds the image: the decision is per user.
    again = docker_as(other_user, docker_env, agent, "pull", DENIED)
    assert again.returncode != 0 and DENIED_MESSAGE in again.stderr, describe(again, agent)

    deny = agent.wait_for_decision(
        lambda d: d["decision"] == "deny" and d["peer"]["uid"] == other_user.uid, since=line
    )
    assert deny["identity"] == "bob@acme.test"
    assert deny["rule"] == "category:community"
    allow = agent.wait_for_decision(
        lambda d: d["decision"] == "allow" and d["peer"]["uid"] == 0, since=line
    )
    assert allow["identity"] == "alice@acme.test"
    assert allow["rule"] == "platform-tools"

    def pulls() -> list[dict[str, Any]]:
        return [
            r
            for r in signin.audit_records()[count:]
            if r.get("event.action") == "image-pull" and "pullgate.decision" in r
        ]

    wait_for(lambda: len(pulls()) >= 3, "three pull audit records")
    by_user = {(r["user.id"], r["pullgate.decision"], r.get("pullgate.identity")) for r in pulls()}
    assert by_user == {
        (str(other_user.uid), "deny", "bob@acme.test"),
        ("0", "allow", "alice@acme.test"),
    }


# --------------------------------------------------------------------------- require_sign_in


@pytest.mark.usefixtures("seeded")
def test_require_sign_in_denies_until_login_and_again_after_logout(
    docker_env: DockerEnv, oidc_provider: OIDCProvider, short_base: Path
) -> None:
    ctx = start_sign_in_agent(
        short_base, docker_env.socket_path, oidc_provider, shim_policy(require_sign_in=True)
    )
    agent = ctx.agent
    try:
        refused = docker_via(agent, docker_env, "pull", "alpine")
        assert refused.returncode != 0, describe(refused, agent)
        error_lines = [
            ln for ln in refused.stderr.splitlines() if "Error response from daemon:" in ln
        ]
        assert error_lines, describe(refused, agent)
        assert "pullgate login" in error_lines[0], describe(refused, agent)
        assert "sign in" in error_lines[0], describe(refused, agent)

        status, body = ctx.put_token(real_token(oidc_provider, "erin"))
        assert status == 200, body
        pulled = docker_via(agent, docker_env, "pull", "alpine")
        assert pulled.returncode == 0, describe(pulled, agent)
        allow = agent.wait_for_decision(
            lambda d: d["decision"] == "allow" and d["image"] == "docker.io/library/alpine:latest"
        )
        assert allow["identity"] == "erin@acme.test"

        line, count = ctx.marks()
        status, _, gone = ctx.request("DELETE", "/v1/identity")
        assert (status, gone) == (200, {"identity": None, "forgot": True})
        ctx.notice(line, lambda r: r.get("action") == "sign-out", "sign-out notice")
        record = ctx.audit(
            count, lambda r: r.get("event.action") == "sign-out", "sign-out audit record"
        )
        assert record["pullgate.identity"] == "erin@acme.test"
        status, _, again = ctx.request("DELETE", "/v1/identity")
        assert (status, again) == (200, {"identity": None, "forgot": False})

        refused = docker_via(agent, docker_env, "pull", "alpine")
        assert refused.returncode != 0, describe(refused, agent)
        assert "pullgate login" in refused.stderr, describe(refused, agent)
        agent.stop()
    finally:
        agent.kill()


# --------------------------------------------------------------------------- provider keys


def _key_ids(ctx: SignInAgent) -> list[str]:
    ids: list[str] = ctx.status()["identity"]["keys"]["key_ids"]
    return ids


def test_a_rotated_key_is_fetched_and_a_retired_key_is_refused(
    docker_env: DockerEnv, private_provider: OIDCProvider, short_base: Path, report: Reporter
) -> None:
    """Steps ordered around the agent's limit of one JWKS fetch every UNKNOWN_KID_INTERVAL
    (its fetch at start counts): the first agent meets a new kid within that interval
    (refused), the provider retires the key, a fresh agent refuses the retired key's token,
    and once the interval is over the first agent fetches the keys again on the next
    unknown kid."""
    provider = private_provider
    first = start_sign_in_agent(short_base, docker_env.socket_path, provider, shim_policy())
    second: SignInAgent | None = None
    try:
        kids = provider.signing_kids()
        keys = wait_for(
            lambda: (k := first.status()["identity"]["keys"])["state"] == "ok" and k,
            "the first agent's key fetch",
        )
        assert keys["key_ids"] == sorted(kids.values())
        # Past the interval since the fetch at start, an unknown kid refetches now: the
        # next steps (under a second) then fall within the interval whatever the timing.
        time.sleep(max(0.0, keys["fetched_at"] + UNKNOWN_KID_INTERVAL + 0.5 - time.time()))
        first.expect_refusal(_unknown_key(provider), "unknown_key")
        fetched_at = first.status()["identity"]["keys"]["fetched_at"]
        assert fetched_at > keys["fetched_at"], "an unknown kid did not refetch the keys"

        rotated = provider.rotate_keys()["RS256"]
        token_rotated = _forged(provider)  # the provider's new key signs it
        assert jwt.get_unverified_header(token_rotated)["kid"] == rotated
        # Within the interval after its fetch, the agent does not ask the provider again.
        first.expect_refusal(token_rotated, "unknown_key")
        assert _key_ids(first) == sorted(kids.values())

        newest = provider.rotate_keys(retire_previous=True)["RS256"]
        published = {k["kid"] for k in provider.jwks()["keys"]}
        assert rotated not in published and kids["RS256"] not in published
        # A fresh agent knows only what the provider publishes now.
        second = start_sign_in_agent(short_base, docker_env.socket_path, provider, shim_policy())
        ctx = second
        wait_for(lambda: newest in _key_ids(ctx), "the second agent's key fetch")
        second.expect_refusal(token_rotated, "unknown_key")
        status, body = second.put_token(real_token(provider, "alice"))
        assert status == 200, body

        # The interval is over: an unknown kid makes the first agent fetch the JWKS again.
        waited = max(0.0, fetched_at + UNKNOWN_KID_INTERVAL + 1 - time.time())
        report(f"identity: waiting {waited:.0f} s for the agent's JWKS refetch limit")
        time.sleep(waited)
        token_newest = real_token(provider, "bob")
        assert jwt.get_unverified_header(token_newest)["kid"] == newest
        status, body = first.put_token(token_newest)
        assert status == 200, body
        assert newest in _key_ids(first)
        assert rotated not in _key_ids(first)
        first.expect_refusal(token_rotated, "unknown_key")  # retired: gone from its keys too
        second.agent.stop()
        first.agent.stop()
    finally:
        first.agent.kill()
        if second is not None:
            second.agent.kill()


def test_an_unreachable_provider_is_503_keys_unavailable_and_doctor_says_so(
    docker_env: DockerEnv, private_provider: OIDCProvider, short_base: Path
) -> None:
    token = real_token(private_provider, "alice")
    stop_oidc_provider(private_provider)
    ctx = start_sign_in_agent(short_base, docker_env.socket_path, private_provider, shim_policy())
    try:
        keys = wait_for(
            lambda: (k := ctx.status()["identity"]["keys"])["state"] == "unavailable" and k,
            "keys unavailable in status",
        )
        assert keys["key_ids"] == []
        assert keys["error"]
        answer = ctx.expect_refusal(token, "keys_unavailable", status=503)
        assert "identity provider's keys" in answer["message"]

        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = ctx.agent.docker_host
        doctor = subprocess.run(
            [sys.executable, "-m", "agent", "doctor", "--json", "--control", str(ctx.control)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        checks = {c["name"]: c for c in json.loads(doctor.stdout)}
        assert doctor.returncode != 0
        assert checks["signed in"]["result"] == "FAIL", checks["signed in"]
        assert "identity provider's keys" in checks["signed in"]["detail"]
        assert checks["signed in"]["fix"]

        status = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--control", str(ctx.control)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert "provider keys" in status.stdout and "unavailable" in status.stdout, status.stdout
        ctx.agent.stop()
    finally:
        ctx.agent.kill()


# --------------------------------------------------------------------------- expiry


def test_an_identity_expires_without_renewal_and_says_so(oidc_provider: OIDCProvider) -> None:
    """identity_max_age is at least 5 minutes in the managed config, so the store is built
    here with a max age of a second: the real provider's keys, the real expiry timer."""
    assert oidc_provider.ca_bundle is not None
    settings = VerifierSettings(
        issuer=oidc_provider.issuer,
        client_id=CLIENT_ID,
        scopes=("openid", "email"),
        groups_claim="groups",
        methods=("device",),
        max_age=timedelta(seconds=1),
        allowed_domains=("acme.test",),
        ca_bundle=oidc_provider.ca_bundle,
    )
    events: list[Event] = []
    token = real_token(oidc_provider, "alice")
    peer = PeerInfo(pid=os.getpid(), uid=4242, gid=4242, user="alice-os")

    async def scenario() -> None:
        store = IdentityStore(settings, events.append)
        await store.start()
        try:
            binding = await store.accept(token, peer)
            assert binding.expires_at == pytest.approx(binding.accepted_at + 1)
            identity = store.identity_for(4242)
            assert identity is not None and identity.email == "alice@acme.test"
            assert store.identity_for(0) is None  # nobody borrows another uid's sign-in
            await asyncio.sleep(0.5)
            assert store.identity_for(4242) is not None
            deadline = time.monotonic() + 5
            while not any(
                isinstance(e, NoticeEvent) and e.action == "identity-expired" for e in events
            ):
                assert time.monotonic() < deadline, events
                await asyncio.sleep(0.05)
            assert store.identity_for(4242) is None
            assert store.binding(4242) is None
            assert store.status(4242)["you"] is None
            assert store.status(0)["users"] == []
            assert store.forget(peer) is False  # already gone: no sign-out event
        finally:
            await store.close()

    asyncio.run(scenario())
    actions = [e.action for e in events if isinstance(e, NoticeEvent)]
    assert actions == ["sign-in", "identity-expired"]
    expired = events[-1]
    assert isinstance(expired, NoticeEvent)
    assert expired.details["email"] == "alice@acme.test"
    assert expired.peer == peer
    assert "pullgate login" in expired.reason


def test_a_token_presented_after_its_identity_expired_is_still_a_replay(
    oidc_provider: OIDCProvider,
) -> None:
    """Expiry forgets the identity, not the tokens already used."""
    settings = VerifierSettings(
        issuer=oidc_provider.issuer,
        client_id=CLIENT_ID,
        scopes=("openid",),
        groups_claim="groups",
        methods=("device",),
        max_age=timedelta(seconds=0.2),
        ca_bundle=oidc_provider.ca_bundle,
    )
    events: list[Event] = []
    token = real_token(oidc_provider, "bob")
    peer = PeerInfo(pid=os.getpid(), uid=4343, gid=4343, user="bob-os")

    async def scenario() -> str:
        store = IdentityStore(settings, events.append)
        try:
            await store.accept(token, peer)
            await asyncio.sleep(0.4)
            assert store.identity_for(4343) is None
            try:
                await store.accept(token, peer)
            except Exception as e:
                return str(getattr(e, "reason", e))
            return "accepted"
        finally:
            await store.close()

    assert asyncio.run(scenario()) == "replayed"
