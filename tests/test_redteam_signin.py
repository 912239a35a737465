"""Red team of the org sign-in (issue 13): ways to make the agent accept an identity the
provider did not issue to this OS user, to decide one user's requests with another user's
identity, to break the per-user sign-in client, to stall the agent through
``/v1/identity``, and to leak tokens or identities into records.

Real parts where it matters: a real ``pullgate agent`` (``--upstream`` a socket that does
not exist: only the control API is attacked), the real OpenID provider of tests/oidc (the
session fixture ``oidc_provider``; forged tokens are signed with its real keys through
``sign_id_token``), requests from a second OS uid made with ``subprocess``'s ``user=`` (the
kernel's ``SO_PEERCRED`` then reports that uid; no passwd entry is needed). The BuildKit
identity test drives the shim's ``Tunnel`` judges directly (a real buildx build in flight
for a second user is out of reach of this file's time budget).

Each test pins a defence. Four began as findings (strict xfails) and hold since their
fixes: gateway calls decided as their caller, the loopback listener ignoring a stray
callback, ``xms_edov`` only from Entra and never over ``email_verified: false``, and tokens
redacted from recorded command lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.core.identity import Expectations, RefusalReason, TokenRefusedError, check_claims
from agent.core.inspection.buildkit.inputs import from_solve_request
from agent.core.inspection.buildkit.protos import control_pb2, gateway_pb2
from agent.core.inspection.request import Inspection
from agent.core.peer import PeerInfo
from agent.core.policy.default import default_policy
from agent.daemon.buildkit_builds import CONTROL_SOLVE_ENDPOINT, BuildRegistry, PendingBuild
from agent.daemon.buildkit_tunnel import (
    BUILD_ID,
    GATEWAY,
    RESOLVE_IMAGE,
    Tunnel,
    TunnelKind,
    _Pair,
    _UnaryHook,
)
from agent.daemon.identities import IdentityStore, VerifierSettings
from agent.identity.errors import SignInError
from agent.identity.loopback import BrowserSignIn
from agent.identity.provider import ProviderClient
from tests.agent_process import AgentProcess, start_agent, unix_request
from tests.oidc_provider import CLIENT_ID, OIDCProvider, b64url, compact_jws
from tests.policy_server import PolicyServer, Route, TLSMaterial

TIMEOUT = 15.0
OTHER_UID = 54321  # no passwd entry needed: SO_PEERCRED reports the number
OTHER_GID = 54321
OTHER_PYTHON = "/usr/bin/python3"
"""Runs the other uid's client (stdlib only): the test's own interpreter may sit under
root's home, which other uids cannot traverse."""


# --------------------------------------------------------------------------- helpers


def _hs256(header: Mapping[str, Any], claims: Mapping[str, Any], key: bytes) -> str:
    """An HMAC "signature" by hand (PyJWT rightly refuses a PEM as an HMAC secret)."""
    signing = compact_jws(header, claims).rsplit(".", 1)[0]
    mac = hmac.new(key, signing.encode("ascii"), hashlib.sha256).digest()
    return f"{signing}.{b64url(mac)}"


def real_token(provider: OIDCProvider, account: str = "alice") -> str:
    """A fresh ID token from the provider's real code + PKCE flow (a nonce makes it unique)."""
    return provider.code_login(account, nonce=secrets.token_urlsafe(16)).field("id_token")


# A client run as another uid: one HTTP/1.1 request over the control socket, the raw answer
# on stdout. The body comes from stdin, or (argv[4], when given) from the command line.
_CLIENT = r"""
import socket, sys
path, method, target = sys.argv[1], sys.argv[2], sys.argv[3]
body = sys.argv[4].encode() if len(sys.argv) > 4 else sys.stdin.buffer.read()
head = f"{method} {target} HTTP/1.1\r\nHost: pullgate\r\nConnection: close\r\n"
if body or method == "PUT":
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(path)
s.sendall(head.encode() + b"\r\n" + body)
out = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    out += chunk
sys.stdout.buffer.write(out)
"""


@dataclass
class Answer:
    status: int
    body: Any


def _parse(raw: bytes) -> Answer:
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        body = json.loads(payload) if payload.strip() else None
    except ValueError:
        body = payload
    return Answer(status, body)


class Agent:
    """A running agent with sign-in configured (its control socket beside the shim's)."""

    def __init__(self, process: AgentProcess) -> None:
        self.process = process
        self.workdir = process.socket_path.parent
        self.control = self.workdir / "control.sock"
        self.audit_dir = self.workdir / "audit"

    def request(
        self, method: str, target: str, body: bytes | None = None, *, uid: int | None = None
    ) -> Answer:
        if uid is None:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            status, _, raw = unix_request(
                self.control, method, target, body=body, headers=headers, timeout=TIMEOUT
            )
            try:
                parsed = json.loads(raw) if raw.strip() else None
            except ValueError:
                parsed = raw
            return Answer(status, parsed)
        done = subprocess.run(
            [OTHER_PYTHON, "-I", "-c", _CLIENT, str(self.control), method, target],
            input=body or b"",
            capture_output=True,
            user=uid,
            group=OTHER_GID,
            extra_groups=[],
            cwd="/",
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return _parse(done.stdout)

    def put(self, token: str, *, uid: int | None = None) -> Answer:
        return self.request(
            "PUT", "/v1/identity", json.dumps({"id_token": token}).encode(), uid=uid
        )

    def identity(self, *, uid: int | None = None) -> Any:
        answer = self.request("GET", "/v1/identity", uid=uid)
        assert answer.status == 200, answer
        return answer.body["identity"]

    def forget(self, *, uid: int | None = None) -> None:
        assert self.request("DELETE", "/v1/identity", uid=uid).status == 200

    def audit_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.audit_dir.glob("*")))

    def alive(self) -> bool:
        return self.process.proc.poll() is None and self.request("GET", "/v1/status").status == 200


@pytest.fixture(scope="module")
def short_base() -> Iterator[Path]:
    """Under /tmp, traversable by the other uid (pytest's temp directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pgrt-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(oidc_provider: OIDCProvider, short_base: Path) -> Iterator[Agent]:
    if os.geteuid() != 0:
        pytest.skip("needs root: requests are made as a second uid")
    config = short_base / "config.json"
    settings: dict[str, Any] = {
        "oidc_issuer": oidc_provider.issuer,
        "oidc_client_id": CLIENT_ID,
        "allowed_domains": ["acme.test"],
    }
    if oidc_provider.ca_bundle is not None:
        settings["ca_bundle"] = str(oidc_provider.ca_bundle)
    config.write_text(json.dumps(settings))
    config.chmod(0o644)
    process = start_agent(
        short_base,
        short_base / "no-such-daemon.sock",
        None,
        ["--config", str(config), "--no-watch"],
        expect_ping_ok=False,
    )
    try:
        process.socket_path.parent.chmod(0o755)
        yield Agent(process)
        process.stop()
    finally:
        process.kill()


@pytest.fixture
def clean(agent: Agent) -> Iterator[Agent]:
    """Nobody signed in before and after the test."""
    agent.forget()
    yield agent
    agent.forget()
    with contextlib.suppress(AssertionError):
        agent.forget(uid=OTHER_UID)


# --------------------------------------------------------------------------- (a) forgeries


def _forgeries(provider: OIDCProvider) -> list[tuple[str, str, int, str]]:
    """(what, token, status, reason): tokens the provider did not issue to this user."""
    claims = provider.id_token_claims()
    rsa_key = provider.signing_key("RS256")
    kid = rsa_key.key_id
    public_pem = (
        rsa_key.key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mine_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(mine.public_key()))
    ec_kid = provider.signing_key("ES256").key_id
    out: list[tuple[str, str, int, str]] = [
        ("alg none", compact_jws({"alg": "none", "kid": kid}, claims), 403, "bad_algorithm"),
        ("alg NONE", compact_jws({"alg": "NONE", "kid": kid}, claims), 403, "bad_algorithm"),
        (
            "HS256 keyed with the provider's public key",
            _hs256({"alg": "HS256", "kid": kid}, claims, public_pem.encode()),
            403,
            "bad_algorithm",
        ),
        (
            "our key, the provider's kid",
            jwt.encode(claims, mine, algorithm="RS256", headers={"kid": kid}),
            403,
            "bad_signature",
        ),
        (
            "our key embedded as jwk, with jku and x5u to us",
            jwt.encode(
                claims,
                mine,
                algorithm="RS256",
                headers={
                    "kid": "attacker-1",
                    "jwk": mine_jwk,
                    "jku": "https://127.0.0.1:1/jwks",
                    "x5u": "https://127.0.0.1:1/x5u",
                },
            ),
            403,
            "unknown_key",
        ),
        (
            "our key, no kid at all (provider has several keys)",
            jwt.encode(claims, mine, algorithm="RS256"),
            403,
            "malformed",
        ),
        (
            "RS256 header naming the provider's EC key",
            jwt.encode(claims, mine, algorithm="RS256", headers={"kid": ec_kid}),
            403,
            "bad_algorithm",
        ),
        (
            "PS256 (not advertised) with the real RSA key",
            jwt.encode(claims, rsa_key.key, algorithm="PS256", headers={"kid": kid}),
            403,
            "bad_algorithm",
        ),
        (
            "kid is a list",
            compact_jws({"alg": "RS256", "kid": [kid]}, claims, b"x" * 256),
            403,
            "malformed",
        ),
        (
            "a header nested 3000 deep",
            b64url(b"[" * 3000 + b"]" * 3000) + ".e30.c2ln",
            403,
            "malformed",
        ),
        ("larger than 16 KiB", "a" * 17000 + ".e30.c2ln", 403, "malformed"),
        ("not ASCII", compact_jws({"alg": "RS256"}, claims) + "\u00e9", 403, "malformed"),
    ]
    signed: list[tuple[str, dict[str, Any], str]] = [
        ("iss with a trailing slash", {"iss": provider.issuer + "/"}, "wrong_issuer"),
        ("iss of a look-alike", {"iss": provider.issuer + ".evil.test"}, "wrong_issuer"),
        ("aud another app", {"aud": "another-app"}, "wrong_audience"),
        ("aud list without azp", {"aud": ["another-app", CLIENT_ID]}, "wrong_audience"),
        ("azp another app", {"azp": "another-app"}, "wrong_audience"),
        ("aud is an object", {"aud": {CLIENT_ID: True}}, "wrong_audience"),
        ("aud list of lists", {"aud": [[CLIENT_ID]]}, "wrong_audience"),
        ("expired", {"exp": int(time.time()) - 120}, "expired"),
        ("exp true", {"exp": True}, "malformed"),
        ("exp a string", {"exp": "9999999999"}, "malformed"),
        ("nbf in an hour", {"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ("iat in an hour", {"iat": int(time.time()) + 3600}, "not_yet_valid"),
        ("issued 20 min ago", {"iat": int(time.time()) - 1200}, "stale"),
        ("iat missing", {"iat": None}, "malformed"),
        ("email_verified as the string true", {"email_verified": "true"}, "email_not_verified"),
        ("email_verified 1", {"email_verified": 1}, "email_not_verified"),
        ("two @", {"email": "mallory@evil.test@acme.test"}, "no_email"),
        ("domain suffix", {"email": "mallory@evil-acme.test"}, "domain_not_allowed"),
        ("domain with a dot", {"email": "mallory@acme.test."}, "domain_not_allowed"),
        ("subdomain", {"email": "mallory@x.acme.test"}, "domain_not_allowed"),
        ("groups a string", {"groups": "platform"}, "bad_groups"),
        ("groups with a number", {"groups": ["platform", 1]}, "bad_groups"),
        ("no sub", {"sub": None}, "malformed"),
    ]
    for what, overrides, reason in signed:
        body = {k: v for k, v in {**claims, **overrides}.items() if v is not None}
        out.append((what, provider.sign_id_token(body), 403, reason))
    return out


def test_forged_and_confused_tokens_are_refused(oidc_provider: OIDCProvider, clean: Agent) -> None:
    """alg confusion, kid tricks, embedded keys, issuer/audience/azp confusion, time tricks,
    odd JSON: each refused with its reason, nothing bound, the agent still serving."""
    wrong = []
    for what, token, status, reason in _forgeries(oidc_provider):
        answer = clean.put(token)
        got = (answer.status, answer.body.get("reason") if isinstance(answer.body, dict) else None)
        if got != (status, reason):
            wrong.append(f"{what}: got {got}, want {(status, reason)}: {answer.body}")
    assert not wrong, "\n".join(wrong)
    assert clean.identity() is None
    assert clean.alive()


def test_duplicate_and_odd_bodies_are_refused(clean: Agent) -> None:
    """The body is exactly {"id_token": "<JWT>"}: duplicate keys, extra keys, other types,
    deep nesting and oversize bodies are 400/413 before any token is looked at."""
    bodies: list[tuple[bytes, int]] = [
        (b'{"id_token": "a.b.c", "id_token": "d.e.f"}', 400),
        (b'{"id_token": "a.b.c", "uid": 0}', 400),
        (b'{"id_token": ["a.b.c"]}', 400),
        (b'{"id_token": ""}', 400),
        (b'["a.b.c"]', 400),
        (b'{"id_token": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
        (b'{"id_token": "' + b"a" * 70_000 + b'"}', 413),
        (b"\xff\xfe{}", 400),
    ]
    for body, status in bodies:
        answer = clean.request("PUT", "/v1/identity", body)
        assert answer.status == status, (body[:60], answer)
    assert clean.alive()


def test_a_declared_huge_body_is_refused_unread(clean: Agent) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(clean.control))
        s.sendall(
            b"PUT /v1/identity HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n{"
        )
        started = time.monotonic()
        raw = s.recv(65536)
        assert raw.startswith(b"HTTP/1.1 413"), raw
        assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------- (b) uids


def test_a_token_is_accepted_once_whoever_presents_it(
    oidc_provider: OIDCProvider, clean: Agent
) -> None:
    """Replay across uids, with the signature re-spelled (base64 padding: PyJWT accepts
    it, so a digest over the whole token would call it new)."""
    token = real_token(oidc_provider)
    first = clean.put(token)
    assert first.status == 200, first
    assert first.body["identity"]["uid"] == 0
    padded = token + "=" * (-len(token.rsplit(".", 1)[1]) % 4 or 4)
    for variant in (token, padded, token.rsplit(".", 1)[0] + ".AAAA"):
        again = clean.put(variant, uid=OTHER_UID)
        assert again.status == 403, again
        assert again.body["reason"] in {"replayed", "bad_signature"}, again
    assert clean.put(padded, uid=OTHER_UID).body["reason"] == "replayed"
    assert clean.identity(uid=OTHER_UID) is None
    assert clean.identity()["email"] == "alice@acme.test"


def test_another_uid_sees_and_forgets_only_its_own_sign_in(
    oidc_provider: OIDCProvider, clean: Agent
) -> None:
    assert clean.put(real_token(oidc_provider, "alice")).status == 200
    status = clean.request("GET", "/v1/status", uid=OTHER_UID)
    assert status.status == 200
    identity = status.body["identity"]
    assert identity["you"] is None and "users" not in identity
    assert "alice@acme.test" not in json.dumps(status.body)
    forgot = clean.request("DELETE", "/v1/identity", uid=OTHER_UID)
    assert forgot.body == {"identity": None, "forgot": False}
    assert clean.identity()["email"] == "alice@acme.test"
    decisions = clean.request("GET", "/v1/decisions", uid=OTHER_UID)
    assert "alice@acme.test" not in json.dumps(decisions.body)
    clean.forget()
    assert clean.identity() is None


def test_a_user_is_rate_limited_but_root_is_not(clean: Agent) -> None:
    """Ten PUTs a minute for a user (each is verified and audited); the 11th is 429."""
    statuses = [clean.put("not.a.jwt", uid=OTHER_UID + 1).status for _ in range(11)]
    assert statuses[:10] == [403] * 10 and statuses[10] == 429, statuses
    assert clean.put("not.a.jwt").status == 403  # root: never locked out
    assert clean.alive()


async def _resolve_as(build_id: bytes) -> list[int | None]:
    """Mallory's /grpc tunnel sends LLBBridge/ResolveImageConfig (and LLBBridge/Solve)
    naming ``build_id`` while Alice's Control/Solve is in flight: the uids whose identity
    the shim decides them with."""
    alice = PeerInfo(pid=None, uid=1000, gid=1000, user="alice")
    mallory = PeerInfo(pid=None, uid=2000, gid=2000, user="mallory")
    registry = BuildRegistry()
    solve = control_pb2.SolveRequest(Ref="alice-build-7f3k", Frontend="dockerfile.v0")
    registry.add(
        PendingBuild(from_solve_request(solve.SerializeToString()), alice, CONTROL_SOLVE_ENDPOINT)
    )
    decided: list[int | None] = []

    async def decide(
        inspection: Inspection, endpoint: str, peer: PeerInfo, every_stage: Any = None
    ) -> str | None:
        decided.append(peer.uid)
        return None

    tunnel = Tunnel(
        TunnelKind.GRPC,
        None,
        lambda data: None,
        lambda data: None,
        lambda why: None,
        registry=registry,
        decide=decide,
        policy=default_policy,
        peer=mallory,
    )
    headers = [(BUILD_ID, build_id)]
    resolve = _UnaryHook(tunnel, _Pair(1, RESOLVE_IMAGE), headers, tunnel._judge_resolve)
    request = gateway_pb2.ResolveImageConfigRequest(Ref="docker.io/someuser/tool:latest")
    await tunnel._judge_resolve(resolve, request.SerializeToString())
    gateway = _UnaryHook(tunnel, _Pair(3, GATEWAY + b"Solve"), headers, tunnel._judge_gateway_solve)
    await tunnel._judge_gateway_solve(gateway, gateway_pb2.SolveRequest().SerializeToString())
    return decided


def test_a_gateway_call_naming_another_users_build_is_decided_as_the_caller() -> None:
    decided = asyncio.run(_resolve_as(b"alice-build-7f3k"))
    assert decided == [2000, 2000], f"decided as uids {decided}; the caller is uid 2000"


# --------------------------------------------------------------------------- (c) the client


def test_the_loopback_listener_binds_127_0_0_1_only(oidc_provider: OIDCProvider) -> None:
    with (
        ProviderClient(oidc_provider.issuer, ca_bundle=oidc_provider.ca_bundle) as client,
        BrowserSignIn(client, CLIENT_ID, ("openid", "email")) as flow,
    ):
        port = int(urllib.parse.urlsplit(flow.redirect_uri).port or 0)
        assert flow.redirect_uri == f"http://127.0.0.1:{port}/callback"
        address = flow._server.server_address
        assert address[0] == "127.0.0.1", address
        # Another address of this host does not reach it.
        with socket.socket() as s:
            s.settimeout(2)
            try:
                s.connect(("127.0.0.2", port))
                reached = True
            except OSError:
                reached = False
        assert not reached


def test_a_stray_callback_does_not_kill_the_browser_sign_in(oidc_provider: OIDCProvider) -> None:
    scopes = ("openid", "email", "profile", "groups")
    with (
        ProviderClient(oidc_provider.issuer, ca_bundle=oidc_provider.ca_bundle) as client,
        BrowserSignIn(client, CLIENT_ID, scopes) as flow,
    ):
        outcome: list[object] = []
        cancel = threading.Event()
        waiter = threading.Thread(
            target=lambda: outcome.append(_wait(flow, cancel)), name="rt-wait", daemon=True
        )
        waiter.start()
        # The attacker: a request to the callback with a state it made up.
        with contextlib.suppress(requests.RequestException):
            requests.get(flow.redirect_uri + "?state=bogus&code=bogus", timeout=5)
        location = oidc_provider.authorize_in_browser(
            flow.url, "alice", redirect_uri=flow.redirect_uri
        )
        with contextlib.suppress(requests.RequestException):
            requests.get(location, timeout=10)
        waiter.join(20)
        cancel.set()
    assert outcome and not isinstance(outcome[0], BaseException), outcome


def _wait(flow: BrowserSignIn, cancel: threading.Event) -> object:
    try:
        return flow.wait(cancel=cancel, timeout=20)
    except SignInError as e:
        return e


# --------------------------------------------------------------------------- (a) claims


def test_xms_edov_does_not_override_an_explicit_email_verified_false() -> None:
    """Docs: Entra sends no email_verified and xms_edov is accepted "in its place". A token
    that says email_verified false must stay refused whatever else it carries."""
    now = time.time()
    claims = {
        "iss": "https://idp.example",
        "aud": CLIENT_ID,
        "sub": "dave",
        "iat": now,
        "exp": now + 600,
        "email": "dave@acme.test",
        "email_verified": False,
        "xms_edov": True,
    }
    expect = Expectations("https://idp.example", CLIENT_ID, ("acme.test",))
    with pytest.raises(TokenRefusedError) as refused:
        check_claims(claims, expect, now)
    assert refused.value.reason is RefusalReason.EMAIL_NOT_VERIFIED


# --------------------------------------------------------------------------- (e) records


def test_an_id_token_in_the_callers_argv_is_not_recorded(
    oidc_provider: OIDCProvider, clean: Agent
) -> None:
    token = real_token(oidc_provider, "bob")
    body = json.dumps({"id_token": token})
    done = subprocess.run(
        [OTHER_PYTHON, "-I", "-c", _CLIENT, str(clean.control), "PUT", "/v1/identity", body],
        capture_output=True,
        user=OTHER_UID + 2,
        group=OTHER_GID,
        extra_groups=[],
        cwd="/",
        timeout=30,
        check=False,
    )
    assert _parse(done.stdout).status == 200, done
    signed = token.rsplit(".", 1)[0]
    deadline = time.monotonic() + 5
    while signed not in clean.audit_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(AssertionError):
        clean.forget(uid=OTHER_UID + 2)
    assert signed not in clean.audit_text(), "the ID token is in the audit log"
    assert signed not in clean.process.stderr_text(), "the ID token is in the agent's events"


# --------------------------------------------------------------------------- (d) a hostile provider


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial.create(tmp_path_factory.mktemp("rt-tls"))


def _hostile_store(server: PolicyServer, tls: TLSMaterial, *, timeout: float) -> IdentityStore:
    settings = VerifierSettings(
        issuer=server.url(""),
        client_id=CLIENT_ID,
        scopes=("openid",),
        groups_claim="groups",
        methods=("device",),
        max_age=timedelta(hours=8),
        allowed_domains=("acme.test",),
        ca_bundle=tls.ca_cert,
        timeout=timeout,
    )
    return IdentityStore(settings, lambda event: None)


def _discovery(server: PolicyServer) -> bytes:
    return json.dumps(
        {
            "issuer": server.url(""),
            "jwks_uri": server.url("/jwks"),
            "id_token_signing_alg_values_supported": ["RS256"],
        }
    ).encode()


def _rsa_jwk(n: int, e: int, kid: str) -> dict[str, str]:
    def enc(i: int) -> str:
        return b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": enc(n), "e": enc(e)}


async def _with_loop_watch(coro: Any) -> tuple[object, float, float]:
    """Run ``coro`` while measuring the event loop's worst lag: (outcome, seconds, lag)."""
    lag = 0.0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal lag
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lag = max(lag, time.monotonic() - before - 0.01)

    watcher = asyncio.ensure_future(watch())
    started = time.monotonic()
    try:
        outcome: object = await coro
    except Exception as e:
        outcome = e
    elapsed = time.monotonic() - started
    stop.set()
    await watcher
    return outcome, elapsed, lag


PEER = PeerInfo(pid=None, uid=OTHER_UID, gid=OTHER_GID, user=None)


def test_a_trickling_provider_never_stalls_the_loop(tls: TLSMaterial) -> None:
    """Discovery trickled a byte every 0.2 s: the sign-in is refused (keys_unavailable) at
    the fetch deadline, and the agent's loop keeps running meanwhile."""
    with PolicyServer(tls) as server:
        server.set(
            "/.well-known/openid-configuration",
            Route(body=_discovery(server), trickle=0.2, trickle_headers=False),
        )
        store = _hostile_store(server, tls, timeout=0.5)  # deadline 0.5 + 2 * 0.5 s
        token = compact_jws({"alg": "RS256", "kid": "k"}, {}, b"x" * 256)
        outcome, elapsed, lag = asyncio.run(_with_loop_watch(store.accept(token, PEER)))
    assert isinstance(outcome, TokenRefusedError), outcome
    assert outcome.reason is RefusalReason.KEYS_UNAVAILABLE
    assert elapsed < 10.0 and lag < 1.0, (elapsed, lag)  # hang detectors, not budgets


def test_a_gigantic_or_crowded_jwks_is_bounded(tls: TLSMaterial) -> None:
    """A JWKS over the 256 KiB cap is refused; one with hundreds of keys under it loads in
    the fetch thread without holding the loop."""
    n = (1 << 2047) | secrets.randbits(2047) | 1
    crowded = {"keys": [_rsa_jwk(n, 65537, f"k{i}") for i in range(600)]}
    with PolicyServer(tls) as server:
        server.set("/.well-known/openid-configuration", Route(body=_discovery(server)))
        server.set("/jwks", Route(body=b'{"keys": [' + b" " * (300 * 1024) + b"]}"))
        store = _hostile_store(server, tls, timeout=2.0)
        outcome, _, _ = asyncio.run(_with_loop_watch(store.keys.get()))
        assert isinstance(outcome, TokenRefusedError), outcome
        body = json.dumps(crowded).encode()
        assert len(body) < 256 * 1024
        server.set("/jwks", Route(body=body))
        store = _hostile_store(server, tls, timeout=2.0)
        outcome, elapsed, lag = asyncio.run(_with_loop_watch(store.keys.get()))
    assert not isinstance(outcome, Exception), outcome
    assert elapsed < 10.0 and lag < 1.0, (elapsed, lag)  # hang detectors, not budgets


def test_a_key_built_to_slow_verification_is_not_used(tls: TLSMaterial) -> None:
    """The most expensive public key OpenSSL takes (3072-bit modulus, 3071-bit exponent)
    cost ~10 ms a verification, on the loop: the agent now ignores RSA keys with an
    exponent over 32 bits (real ones use 65537) or a modulus outside 2048-8192 bits."""
    n = (1 << 3071) | secrets.randbits(3071) | 1
    e = (1 << 3070) | secrets.randbits(3070) | 1
    jwks = {"keys": [_rsa_jwk(n, e, "slow")]}
    token = compact_jws({"alg": "RS256", "kid": "slow"}, {"sub": "x"}, secrets.token_bytes(384))
    with PolicyServer(tls) as server:
        server.set("/.well-known/openid-configuration", Route(body=_discovery(server)))
        server.set("/jwks", Route(body=json.dumps(jwks).encode()))
        store = _hostile_store(server, tls, timeout=2.0)

        async def once() -> object:
            try:
                return await store.accept(token, PEER)
            except TokenRefusedError as e:
                return e

        outcome = asyncio.run(once())
    assert isinstance(outcome, TokenRefusedError), outcome
    assert outcome.reason is RefusalReason.KEYS_UNAVAILABLE
    assert "no usable public signing key" in outcome.message


def test_unknown_kids_refetch_the_jwks_rarely(tls: TLSMaterial) -> None:
    n = (1 << 2047) | secrets.randbits(2047) | 1
    with PolicyServer(tls) as server:
        server.set("/.well-known/openid-configuration", Route(body=_discovery(server)))
        server.set("/jwks", Route(body=json.dumps({"keys": [_rsa_jwk(n, 65537, "k")]}).encode()))
        store = _hostile_store(server, tls, timeout=2.0)

        async def many() -> list[object]:
            out: list[object] = []
            for i in range(20):
                token = compact_jws({"alg": "RS256", "kid": f"nope-{i}"}, {}, b"x" * 256)
                try:
                    out.append(await store.accept(token, PEER))
                except TokenRefusedError as e:
                    out.append(e.reason)
            return out

        reasons = asyncio.run(many())
        fetched = server.requests("/jwks")
    assert reasons == [RefusalReason.UNKNOWN_KEY] * 20, reasons
    assert fetched <= 2, f"{fetched} JWKS fetches for 20 unknown kids"


def test_the_keys_are_not_fetched_from_another_host_by_redirect(tls: TLSMaterial) -> None:
    """An open redirect at the provider must not serve someone else's keys: discovery and
    the JWKS follow redirects on their own host only (the policy may move anywhere, its
    signature decides; the keys are trusted for where they come from)."""
    n = (1 << 2047) | secrets.randbits(2047) | 1
    with PolicyServer(tls) as server, PolicyServer(tls) as elsewhere:
        elsewhere.set("/jwks", Route(body=json.dumps({"keys": [_rsa_jwk(n, 65537, "k")]}).encode()))
        server.set("/.well-known/openid-configuration", Route(body=_discovery(server)))
        server.set("/jwks", Route(status=302, location=elsewhere.url("/jwks")))
        store = _hostile_store(server, tls, timeout=2.0)

        async def get() -> object:
            try:
                return await store.keys.get()
            except TokenRefusedError as e:
                return e

        outcome = asyncio.run(get())
        assert elsewhere.requests("/jwks") == 0
    assert isinstance(outcome, TokenRefusedError), outcome
    assert outcome.reason is RefusalReason.KEYS_UNAVAILABLE
    assert "another host" in outcome.message
