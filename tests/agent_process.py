"""Run `pullgate agent` (the Docker socket shim) as a real process, and talk through it.

`start_agent(base, upstream, policy)` writes `policy` (a policy document, see docs/policy.md;
None for the built-in default policy) to a file, starts

    python -m agent agent --policy FILE --listen SOCK --upstream unix://UPSTREAM

and returns once the listen socket answers `GET /_ping` with 200. `AgentProcess.stop()` sends
SIGTERM and expects exit code 0 within 5 s. What the agent writes to stderr is kept in a
file: `records()` / `decisions()` parse its one-JSON-object-per-line decision records
(`{"type": "decision", "decision": "allow" | "deny" | "would_deny", "image": ...}`).

`docker_via(agent, env, ...)` runs the docker CLI with DOCKER_HOST pointing at the agent;
`shim_environ` gives the environment for other clients (docker-compose). The remaining
helpers ask the daemon and registry directly, bypassing the shim, what they hold.

Set PULLGATE_TEST_AGENT_COMMAND (split like a shell command line) to test another build of
the agent, e.g. `pullgate agent` from an installed package.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from queue import Empty, Queue
from typing import IO, Any, NoReturn

import pytest

from agent.platform.unix_sockets import UnixHTTPConnection
from bench.realdocker import DockerEnv, docker

__all__ = [
    "AGENT_COMMAND_ENV",
    "DEBIAN_DOCKER_CLI",
    "DENIED_REPOSITORY",
    "AgentProcess",
    "AgentStartError",
    "LineStream",
    "Reporter",
    "describe",
    "docker_popen_with",
    "docker_via",
    "docker_with",
    "images_of",
    "in_ci",
    "reap",
    "registry_image_id",
    "remove_images",
    "shim_environ",
    "shim_policy",
    "skip_or_fail",
    "start_agent",
    "unix_request",
]

AGENT_COMMAND_ENV = "PULLGATE_TEST_AGENT_COMMAND"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CLI_TIMEOUT = 60.0
"""Every docker CLI call through the shim ends within this, hung or not."""

DEBIAN_DOCKER_CLI = "/usr/bin/docker"
"""Debian's docker.io CLI 20.10: its BuildKit client is built in (the 28 CLI needs buildx)."""

DENIED_REPOSITORY = "someuser/tool"
"""The community repository the shim tests try to bring onto the machine every way they can."""

_SUN_PATH_MAX = 107

Reporter = Callable[[str], None]
"""Prints a line (timings) in the test run's output: the `report` fixture of conftest.py."""


def in_ci() -> bool:
    """Whether this run is CI, where a missing requirement fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally; fail under CI, so a broken CI machine setup cannot pass quietly."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


class AgentStartError(RuntimeError):
    """The agent exited, or did not answer `GET /_ping`, in time."""


# --------------------------------------------------------------------------- policies


def shim_policy(**overrides: Any) -> dict[str, Any]:
    """The shim tests' policy document: org `acme`, verified publisher `verifiedco`,
    community denied, everything else at its documented default; `overrides` replace
    top-level fields (a value of None removes the field). Valid from yesterday for 30 days.
    """
    now = time.time()
    doc: dict[str, Any] = {
        "schema": "pullgate.policy/v1",
        "org": "acme",
        "serial": 1,
        "issued_at": _rfc3339(now - 86400),
        "expires_at": _rfc3339(now + 30 * 86400),
        "mode": "enforce",
        "hub": {
            "org_namespaces": ["acme"],
            "official": "allow",
            "verified_publisher": "allow",
            "verified_publisher_namespaces": ["verifiedco"],
            "community": "deny",
        },
        "builds": "deny",
        "load": "check",
        "on_create": "check",
    }
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --------------------------------------------------------------------------- the agent


class AgentProcess:
    """A running `pullgate agent`, its listen socket and what it printed."""

    def __init__(
        self,
        *,
        proc: subprocess.Popen[bytes],
        argv: Sequence[str],
        socket_path: Path,
        upstream: Path,
        policy_path: Path | None,
        stderr_path: Path,
        ready_seconds: float,
        scratch: Path | None,
    ) -> None:
        self.proc = proc
        self.argv = tuple(argv)
        self.socket_path = socket_path
        self.upstream = upstream
        self.policy_path = policy_path
        self.stderr_path = stderr_path
        self.ready_seconds = ready_seconds
        """Wall time from starting the process until the socket answered `GET /_ping`."""
        self._scratch = scratch

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_lines(self) -> list[str]:
        """Everything the agent wrote to stderr so far, a line each."""
        return self.stderr_text().splitlines()

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_lines()[-lines:]) or "<nothing>"

    def mark(self) -> int:
        """How many complete lines are on stderr now: pass it to `records(since=...)`."""
        return self.stderr_text().count("\n")

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        """JSON objects the agent wrote, one a line, from complete line `since` on."""
        text = self.stderr_text()
        complete = text[: text.rfind("\n") + 1].splitlines()
        found: list[dict[str, Any]] = []
        for line in complete[since:]:
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    found.append(value)
        return found

    def decisions(self, since: int = 0) -> list[dict[str, Any]]:
        return [r for r in self.records(since) if r.get("type") == "decision"]

    def wait_for_decision(
        self,
        matches: Callable[[dict[str, Any]], bool],
        *,
        since: int = 0,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """The first decision record after line `since` that `matches`; fails after `timeout`.

        The shim may answer the client before its record reaches stderr, so poll a little.
        """
        deadline = time.monotonic() + timeout
        while True:
            for record in self.decisions(since):
                if matches(record):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching decision record within {timeout:.0f} s; decision records:"
                    f" {json.dumps(self.decisions(since), indent=1)}\n"
                    f"agent stderr tail:\n{self.stderr_tail()}"
                )
            time.sleep(0.05)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM; assert that the agent exits with 0 within `timeout` (else kill it)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
                    raise AssertionError(
                        f"agent (pid {self.proc.pid}) did not exit within {timeout:.0f} s of"
                        f" SIGTERM; stderr tail:\n{self.stderr_tail()}"
                    ) from None
            assert self.proc.returncode == 0, (
                f"agent exited with {self.proc.returncode} after SIGTERM (expected 0);"
                f" stderr tail:\n{self.stderr_tail()}"
            )
        finally:
            self._cleanup()

    def kill(self) -> None:
        """SIGKILL, for teardown after a failure; no assertion."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def agent_command() -> list[str]:
    """How to run `pullgate agent`: PULLGATE_TEST_AGENT_COMMAND, else this interpreter."""
    configured = os.environ.get(AGENT_COMMAND_ENV, "").strip()
    if configured:
        return shlex.split(configured)
    return [sys.executable, "-m", "agent", "agent"]


def start_agent(
    base: Path,
    upstream: Path,
    policy: Mapping[str, Any] | None,
    extra_args: Sequence[str] = (),
    *,
    expect_ping_ok: bool = True,
    timeout: float = READY_TIMEOUT,
) -> AgentProcess:
    """Start the agent in front of the daemon socket `upstream`, in a new directory under
    `base`, and wait until its socket answers `GET /_ping` (with 200 unless
    `expect_ping_ok` is false: an agent whose upstream is down still answers, with an error).
    """
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="agent-", dir=base))
    socket_path = workdir / "docker.sock"
    scratch: Path | None = None
    if len(str(socket_path)) > _SUN_PATH_MAX:
        scratch = Path(tempfile.mkdtemp(prefix="pgag-", dir="/tmp"))
        socket_path = scratch / "docker.sock"
    argv = agent_command()
    policy_path: Path | None = None
    if policy is not None:
        policy_path = workdir / "policy.json"
        policy_path.write_text(json.dumps(policy, indent=2) + "\n")
        argv += ["--policy", str(policy_path)]
    argv += ["--listen", str(socket_path), "--upstream", f"unix://{upstream}"]
    for flag, where in (("--state-dir", "state"), ("--audit-dir", "audit")):
        if not any(a == flag or a.startswith(flag + "=") for a in extra_args):
            argv += [flag, str(workdir / where)]
    argv += [*extra_args]
    stderr_path = workdir / "stderr.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    started = time.monotonic()
    with stderr_path.open("wb") as err, (workdir / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=environ,
            cwd=Path(__file__).resolve().parent.parent,
            # Signals from the terminal reach the test run, whose teardown stops the agent.
            start_new_session=True,
        )
    agent = AgentProcess(
        proc=proc,
        argv=argv,
        socket_path=socket_path,
        upstream=upstream,
        policy_path=policy_path,
        stderr_path=stderr_path,
        ready_seconds=0.0,
        scratch=scratch,
    )
    deadline = started + timeout
    last = "no answer"
    while True:
        if proc.poll() is not None:
            agent.kill()
            raise AgentStartError(
                f"`{shlex.join(argv)}` exited with {proc.returncode} before answering"
                f" GET /_ping; stderr:\n{agent.stderr_tail(60)}"
            )
        if socket_path.exists():
            try:
                status, _, body = unix_request(socket_path, "GET", "/_ping", timeout=2.0)
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if status == 200 or not expect_ping_ok:
                    agent.ready_seconds = time.monotonic() - started
                    return agent
                last = f"HTTP {status} {body[:200]!r}"
        if time.monotonic() > deadline:
            agent.kill()
            raise AgentStartError(
                f"`{shlex.join(argv)}` did not answer GET /_ping with 200 within"
                f" {timeout:.0f} s (last: {last}); stderr:\n{agent.stderr_tail(60)}"
            )
        time.sleep(0.02)


# --------------------------------------------------------------------------- clients


def shim_environ(
    agent: AgentProcess, env: DockerEnv, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """env.env (private CLI config, no proxies) with DOCKER_HOST at the agent's socket."""
    environ = dict(env.env)
    environ["DOCKER_HOST"] = agent.docker_host
    environ.update(extra or {})
    return environ


def docker_with(
    environ: Mapping[str, str],
    *args: str,
    cli: str,
    input: str | bytes | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a docker CLI with `environ`; output decoded as UTF-8; never raises on failure."""
    argv = [cli, *args]
    data = input.encode() if isinstance(input, str) else input
    try:
        result = subprocess.run(
            argv,
            input=data,
            capture_output=True,
            env=dict(environ),
            timeout=timeout,
            check=False,
            stdin=None if data is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"`{shlex.join(argv)}` (DOCKER_HOST={environ.get('DOCKER_HOST')}) did not finish"
            f" within {timeout:.0f} s; stderr so far:\n{_decode(e.stderr)}"
        ) from None
    return subprocess.CompletedProcess(
        argv, result.returncode, _decode(result.stdout), _decode(result.stderr)
    )


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def docker_via(
    agent: AgentProcess,
    env: DockerEnv,
    *args: str,
    input: str | bytes | None = None,
    cli: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI (env.docker_cli unless `cli`) through the shim."""
    return docker_with(
        shim_environ(agent, env, extra_env),
        *args,
        cli=cli or env.docker_cli,
        input=input,
        timeout=timeout,
    )


def docker_popen_with(
    environ: Mapping[str, str],
    *args: str,
    cli: str,
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[str]:
    """Start a docker CLI (for `logs -f`, `attach`, `events`); line-buffered text pipes."""
    return subprocess.Popen(
        [cli, *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=dict(environ),
    )


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill a started CLI (if still running), wait for it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()


def describe(result: subprocess.CompletedProcess[str], agent: AgentProcess | None = None) -> str:
    """A failure message: the command, its exit code and output, and the agent's stderr."""
    cmd = result.args if isinstance(result.args, str) else shlex.join(map(str, result.args))
    parts = [
        f"command: {cmd}",
        f"exit code: {result.returncode}",
        f"stdout:\n{_tail(result.stdout, 25)}",
        f"stderr:\n{_tail(result.stderr, 25)}",
    ]
    if agent is not None:
        parts.append(f"agent stderr tail:\n{agent.stderr_tail()}")
    return "\n".join(parts)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


class LineStream:
    """The lines of a text stream, read by a thread, each awaited with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: Queue[str | None] = Queue()
        self.lines: list[str] = []
        self.eof = False

        def pump() -> None:
            try:
                for line in stream:
                    self._queue.put(line)
            except (OSError, ValueError):
                pass
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float) -> str | None:
        """The next line; None at end of stream; TimeoutError if none comes in time."""
        if self.eof:
            return None
        try:
            line = self._queue.get(timeout=timeout)
        except Empty:
            raise TimeoutError(f"no line within {timeout:.1f} s (got {self.lines})") from None
        if line is None:
            self.eof = True
            return None
        self.lines.append(line)
        return line

    def until_eof(self, timeout: float) -> list[str]:
        """All remaining lines; TimeoutError if the stream has not ended by then."""
        deadline = time.monotonic() + timeout
        rest: list[str] = []
        while (line := self.next(max(0.0, deadline - time.monotonic()))) is not None:
            rest.append(line)
        return rest


# --------------------------------------------------------------------------- direct checks


def unix_request(
    socket_path: Path,
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One well-formed HTTP/1.1 request over a unix socket: (status, headers, body)."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def images_of(env: DockerEnv, repository: str, image_ids: Collection[str] = ()) -> list[str]:
    """What the daemon (asked directly) holds of `repository` (a Docker Hub path such as
    `someuser/tool`, under any registry name, tag or digest) or of any of `image_ids`,
    as `ID [names]` strings."""
    return [f"{image['Id']} {_names(image)}" for image in _images(env, repository, image_ids)]


def remove_images(env: DockerEnv, repository: str, image_ids: Collection[str] = ()) -> None:
    """Remove (directly, forced) everything `images_of` finds, and images built on top of
    it (children first: a parent with children cannot be removed); assert none is left."""
    status, _, body = unix_request(env.socket_path, "GET", "/images/json?all=1")
    assert status == 200, body
    everything: list[dict[str, Any]] = json.loads(body)
    doomed = [str(image["Id"]) for image in _images(env, repository, image_ids)]
    children: dict[str, list[str]] = {}
    for image in everything:
        if image.get("ParentId"):
            children.setdefault(str(image["ParentId"]), []).append(str(image["Id"]))
    order: list[str] = []
    pending = list(doomed)
    while pending:
        image_id = pending.pop()
        if image_id not in order:
            order.append(image_id)
            pending.extend(children.get(image_id, []))
    if order:
        docker(env, "image", "rm", "--force", *reversed(order), check=False)
    left = images_of(env, repository, image_ids)
    assert not left, f"could not remove {left}"


def _names(image: Mapping[str, Any]) -> list[str]:
    names = [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]
    return [str(n) for n in names if not str(n).startswith("<none>")]


def _images(env: DockerEnv, repository: str, image_ids: Collection[str]) -> list[dict[str, Any]]:
    status, _, body = unix_request(env.socket_path, "GET", "/images/json?all=1")
    if status != 200:
        raise AssertionError(f"daemon GET /images/json answered {status}: {body[:300]!r}")
    named = re.compile(rf"(?:^|/){re.escape(repository)}(?:[:@]|$)")
    images: list[dict[str, Any]] = json.loads(body)
    return [
        image
        for image in images
        if image.get("Id") in image_ids or any(named.search(n) for n in _names(image))
    ]


def registry_image_id(env: DockerEnv, repository: str, tag: str) -> str:
    """The image ID (config digest) the daemon gets when pulling `repository:tag` from the
    local registry mirror: it identifies the image whatever name it is pulled under."""
    request = urllib.request.Request(
        f"{env.registry_url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as resp:
        manifest = json.loads(resp.read())
    digest = manifest["config"]["digest"]
    assert isinstance(digest, str) and digest.startswith("sha256:"), manifest
    return digest
