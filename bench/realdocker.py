"""A private, real Docker engine for tests and benchmarks (real parts, no mocks).

`start_docker_env(base)` starts, all under `base` and on 127.0.0.1 only:

- `docker-registry serve` (Debian's distribution/registry) on a free port, and
- a private `dockerd` (with its own managed containerd under its exec root) that uses that
  registry as its `docker.io` mirror.

`seed_image(env, "someuser/tool:1.0")` pushes a tiny busybox image to the registry, so that
`docker pull someuser/tool:1.0` against the private daemon is served locally.

Needs root, Linux, and the Debian packages installed by `scripts/install-system-deps.sh`.
This module has no pytest dependency; `missing_requirements()` tells a test module why it
cannot run, and the test module decides whether to skip or fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.platform.unix_sockets import UnixHTTPConnection

__all__ = [
    "BUSYBOX",
    "DockerCommandError",
    "DockerEnv",
    "DockerEnvError",
    "SeededImage",
    "docker",
    "docker_popen",
    "hub_repository",
    "image_present",
    "missing_requirements",
    "seed_image",
    "start_docker_env",
    "stop_docker_env",
]

BUSYBOX = Path("/bin/busybox")
"""Statically linked busybox from Debian's busybox-static: the only binary in seeded images."""

APPLETS = ("sh", "echo", "cat", "sleep", "ls", "env", "true", "false")
"""Busybox applets linked into seeded images' /bin."""

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
DEFAULT_CLI_TIMEOUT = 120.0

# sun_path is 108 bytes including the NUL; containerd's longest socket under the exec root
# is "<exec-root>/containerd/containerd.sock.ttrpc".
_SUN_PATH_MAX = 107
_LONGEST_SOCKET_SUFFIX = "/exec/containerd/containerd.sock.ttrpc"

_PR_SET_PDEATHSIG = 1

# Environment variables that would point the docker CLI (or dockerd) elsewhere.
_STRIPPED_ENV_PREFIXES = ("DOCKER_",)
_STRIPPED_ENV_NAMES = frozenset(
    {
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    }
)


class DockerEnvError(RuntimeError):
    """The private Docker environment could not be started, used or stopped."""


class DockerCommandError(subprocess.CalledProcessError):
    """A `docker` CLI command failed; unlike CalledProcessError, str() shows its output."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip() if isinstance(self.stdout, str) else ""
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else ""
        cmd = self.cmd if isinstance(self.cmd, str) else " ".join(map(str, self.cmd))
        parts = [f"`{cmd}` exited with {self.returncode}"]
        if err:
            parts.append(f"stderr:\n{_tail(err, 40)}")
        if out:
            parts.append(f"stdout:\n{_tail(out, 20)}")
        return "\n".join(parts)


@dataclass(frozen=True)
class DockerEnv:
    """A running private registry + dockerd pair, and how to talk to it."""

    base: Path
    """Where registry storage, daemon data, configs and logs live."""
    run_dir: Path
    """Sockets, pidfile and exec root (== base/run unless base is too long for sun_path)."""
    socket_path: Path
    """The private daemon's API socket."""
    registry: str
    """The local registry as `127.0.0.1:PORT` (the daemon's docker.io mirror)."""
    env: Mapping[str, str] = field(hash=False)
    """Environment for the docker CLI: DOCKER_HOST and a private, empty DOCKER_CONFIG."""
    docker_cli: str
    """Path of the docker CLI used by `docker()`."""
    data_root: Path
    exec_root: Path
    dockerd_log: Path
    registry_log: Path
    startup_seconds: float
    """Wall time from launching dockerd until `GET /_ping` answered."""
    dockerd: subprocess.Popen[bytes] = field(repr=False, compare=False, hash=False)
    registry_proc: subprocess.Popen[bytes] = field(repr=False, compare=False, hash=False)
    dead_end: socket.socket = field(repr=False, compare=False, hash=False)
    """Bound, never listening: the daemon's HTTP(S)_PROXY, so non-loopback pulls fail fast."""

    @property
    def docker_host(self) -> str:
        """`unix:///…/docker.sock`, for DOCKER_HOST or docker-py's base_url."""
        return f"unix://{self.socket_path}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry}"


@dataclass(frozen=True)
class SeededImage:
    """An image pushed to the local registry by `seed_image`."""

    name: str
    """As given, e.g. `alpine` or `someuser/tool:1.0`."""
    repository: str
    """Docker Hub path, e.g. `library/alpine`."""
    tag: str
    digest: str
    """Manifest digest (`sha256:…`) as served by the registry."""
    mirror_ref: str
    """The reference it was pushed as: `127.0.0.1:PORT/library/alpine:latest`."""

    @property
    def hub_ref(self) -> str:
        """The canonical Docker Hub reference: `docker.io/library/alpine:latest`."""
        return f"docker.io/{self.repository}:{self.tag}"


# --------------------------------------------------------------------------- requirements


def missing_requirements() -> list[str]:
    """What is missing for a real Docker environment here; empty when it can run."""
    problems: list[str] = []
    if not hasattr(os, "geteuid") or not Path("/proc/self/mountinfo").exists():
        return ["needs Linux"]
    if os.geteuid() != 0:
        problems.append("needs root (a private dockerd mounts, and manages cgroups)")
    for tool, package in (
        ("dockerd", "docker.io"),
        ("containerd", "docker.io (containerd)"),
        ("runc", "docker.io (runc)"),
        ("docker", "docker.io (CLI)"),
        ("docker-registry", "docker-registry"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found on PATH: install Debian's {package}")
    if not BUSYBOX.is_file():
        problems.append(f"{BUSYBOX} missing: install Debian's busybox-static")
    elif not _is_static_elf(BUSYBOX):
        problems.append(f"{BUSYBOX} is dynamically linked: install Debian's busybox-static")
    if problems:
        problems.append("run `bash scripts/install-system-deps.sh` as root")
    return problems


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header (no dynamic loader)."""
    with path.open("rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        order: Literal["little", "big"] = "little" if ident[5] == 1 else "big"
        if is64:
            phoff = int.from_bytes(ident[32:40], order)
            phentsize = int.from_bytes(ident[54:56], order)
            phnum = int.from_bytes(ident[56:58], order)
        else:
            phoff = int.from_bytes(ident[28:32], order)
            phentsize = int.from_bytes(ident[42:44], order)
            phnum = int.from_bytes(ident[44:46], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    for i in range(phnum):
        entry = table[i * phentsize : i * phentsize + 4]
        if int.from_bytes(entry, order) == pt_interp:
            return False
    return True


# --------------------------------------------------------------------------- start / stop


def start_docker_env(base: Path, *, timeout: float = STARTUP_TIMEOUT) -> DockerEnv:
    """Start a private registry and dockerd under `base` and wait until both answer.

    `base` is created if needed. A previous environment left running in the same `base`
    (its processes found through their pidfiles and command lines) is stopped first.
    """
    problems = missing_requirements()
    if problems:
        raise DockerEnvError("cannot start a real Docker environment: " + "; ".join(problems))

    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    run_dir = _choose_run_dir(base)
    _cleanup_leftovers(base, run_dir)

    data_root = base / "data"
    exec_root = run_dir / "exec"
    socket_path = run_dir / "docker.sock"
    cli_config = base / "cli-config"
    for d in (data_root, cli_config, base / "registry"):
        d.mkdir(parents=True, exist_ok=True)
    # An empty, private CLI config: no contexts, credential helpers or auths of the user's.
    (cli_config / "config.json").write_text("{}\n")

    registry_log = base / "registry.log"
    dockerd_log = base / "dockerd.log"
    daemon_env = _clean_environ()
    # A pull the mirror cannot serve makes dockerd fall back to registry-1.docker.io. Send
    # that (and any other non-loopback request) to a dead-end proxy on 127.0.0.1, a bound
    # but never listening port, so it fails at once with "connection refused" and nothing
    # leaves the machine (not even a DNS query). Go never proxies loopback addresses, so
    # the mirror on 127.0.0.1 is reached directly.
    dead_end = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead_end.bind(("127.0.0.1", 0))
    dead_end_url = f"http://127.0.0.1:{dead_end.getsockname()[1]}"
    daemon_env.update(
        {
            "HTTP_PROXY": dead_end_url,
            "HTTPS_PROXY": dead_end_url,
            "NO_PROXY": "127.0.0.1,localhost,::1",
        }
    )

    try:
        registry_proc, port = _start_registry(base, registry_log, daemon_env, timeout)
    except BaseException:
        dead_end.close()
        raise
    registry = f"127.0.0.1:{port}"
    try:
        # Our own daemon.json, so /etc/docker/daemon.json is never read; the trust key goes
        # under base instead of /etc/docker/key.json.
        daemon_json = base / "daemon.json"
        daemon_json.write_text(
            json.dumps({"deprecated-key-path": str(base / "key.json")}, indent=2) + "\n"
        )
        argv = [
            "dockerd",
            "--config-file",
            str(daemon_json),
            "--host",
            f"unix://{socket_path}",
            "--data-root",
            str(data_root),
            "--exec-root",
            str(exec_root),
            "--pidfile",
            str(run_dir / "docker.pid"),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
            "--registry-mirror",
            f"http://{registry}",
            "--insecure-registry",
            registry,
        ]
        started = time.monotonic()
        dockerd = _spawn(argv, dockerd_log, daemon_env)
        try:
            _wait_for_ping(socket_path, dockerd, dockerd_log, timeout)
        except BaseException:
            _terminate(dockerd, STOP_TIMEOUT)
            _kill_processes_referencing(str(exec_root))
            raise
        startup_seconds = time.monotonic() - started
    except BaseException:
        _terminate(registry_proc, STOP_TIMEOUT)
        _unmount_under(base, run_dir)
        dead_end.close()
        raise

    docker_cli = shutil.which("docker") or "docker"
    cli_env = dict(_clean_environ())
    cli_env.update(
        {
            "DOCKER_HOST": f"unix://{socket_path}",
            "DOCKER_CONFIG": str(cli_config),
            "DOCKER_CLI_HINTS": "false",
        }
    )
    return DockerEnv(
        base=base,
        run_dir=run_dir,
        socket_path=socket_path,
        registry=registry,
        env=cli_env,
        docker_cli=docker_cli,
        data_root=data_root,
        exec_root=exec_root,
        dockerd_log=dockerd_log,
        registry_log=registry_log,
        startup_seconds=startup_seconds,
        dockerd=dockerd,
        registry_proc=registry_proc,
        dead_end=dead_end,
    )


def stop_docker_env(env: DockerEnv, *, timeout: float = STOP_TIMEOUT) -> None:
    """Stop dockerd (and its containerd, shims and containers) and the registry.

    Containers and user-defined networks are removed through the API first (images and the
    registry's content stay). Then SIGTERM, and SIGKILL after `timeout`; anything still
    referencing the exec root is killed, whatever is left mounted under `base` and the run
    dir is unmounted, and the exec root is removed, so the same `base` can be started
    again, or deleted.
    """
    errors: list[str] = []
    bridges: list[str] = []
    if env.dockerd.poll() is None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            bridges = _teardown_through_api(env, timeout)
    if not _terminate(env.dockerd, timeout):
        errors.append(f"dockerd (pid {env.dockerd.pid}) needed SIGKILL")
    # After a clean shutdown nothing is left; after SIGKILL, containerd, shims and the
    # containers' processes may be.
    _kill_container_processes(env.data_root)
    leftovers = _kill_processes_referencing(str(env.exec_root))
    if leftovers:
        errors.append(f"killed leftover processes {leftovers}")
    if not _terminate(env.registry_proc, timeout):
        errors.append(f"docker-registry (pid {env.registry_proc.pid}) needed SIGKILL")
    for bridge in bridges:
        # User-defined bridge networks are host interfaces that outlive dockerd.
        if Path("/sys/class/net", bridge).exists():
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
    env.dead_end.close()
    still_mounted = _unmount_under(env.base, env.run_dir)
    if still_mounted:
        raise DockerEnvError(f"could not unmount {still_mounted}")
    _remove_run_state(env.run_dir)
    if env.run_dir != env.base / "run":
        shutil.rmtree(env.run_dir, ignore_errors=True)
    if errors:
        # Not fatal: the environment is gone. Leave a trace in the daemon log.
        with env.dockerd_log.open("a") as log:
            log.write("realdocker: stop: " + "; ".join(errors) + "\n")


def _teardown_through_api(env: DockerEnv, timeout: float) -> list[str]:
    """Remove all containers and user networks; return the host bridges they used.

    dockerd gives each running container its stop timeout (10 s) on shutdown, and a shell
    or sleep as PID 1 ignores SIGTERM, so containers are force-removed first. User-defined
    bridge networks leave `br-<id>` interfaces on the host unless removed.
    """
    containers = docker(env, "ps", "--all", "--quiet", check=False, timeout=timeout).stdout.split()
    if containers:
        docker(env, "rm", "--force", "--volumes", *containers, check=False, timeout=timeout)
    networks = docker(
        env, "network", "ls", "--quiet", "--no-trunc", "--filter", "driver=bridge", check=False
    ).stdout.split()
    if networks:
        docker(env, "network", "rm", *networks, check=False, timeout=timeout)
    return [f"br-{net[:12]}" for net in networks]


def _choose_run_dir(base: Path) -> Path:
    run_dir = base / "run"
    if len(str(run_dir)) + len(_LONGEST_SOCKET_SUFFIX) <= _SUN_PATH_MAX:
        run_dir.mkdir(exist_ok=True)
        return run_dir
    # base is too deep for unix socket paths: keep sockets in a short directory instead,
    # and leave a pointer in base.
    pointer = base / "run-dir"
    if pointer.exists():
        previous = Path(pointer.read_text().strip())
        if previous.is_dir():
            return previous
    short = Path(tempfile.mkdtemp(prefix="pgdk-", dir="/tmp"))
    pointer.write_text(f"{short}\n")
    return short


def _clean_environ() -> dict[str, str]:
    """os.environ without what would point docker or dockerd elsewhere.

    DOCKER_RAMDISK is kept: where the root file system is a ramdisk, runc cannot
    pivot_root and the machine's setup says so through it.
    """
    return {
        k: v
        for k, v in os.environ.items()
        if k == "DOCKER_RAMDISK"
        or (not k.startswith(_STRIPPED_ENV_PREFIXES) and k not in _STRIPPED_ENV_NAMES)
    }


def _set_pdeathsig() -> None:
    """In the child: get SIGTERM when the test process dies, so daemons never outlive it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _spawn(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            # Own session: a Ctrl-C in the terminal reaches the test run, whose teardown
            # stops the daemons, rather than the daemons directly.
            start_new_session=True,
            preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - no threads start daemons here
            close_fds=True,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_registry(
    base: Path, log: Path, env: Mapping[str, str], timeout: float
) -> tuple[subprocess.Popen[bytes], int]:
    """Start docker-registry on a free 127.0.0.1 port; retry if the port got taken."""
    last_error = ""
    for _ in range(5):
        port = _free_port()
        config = base / "registry.yml"
        # JSON is YAML: no YAML library needed.
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "info", "accesslog": {"disabled": False}},
                    "storage": {
                        "filesystem": {"rootdirectory": str(base / "registry")},
                        "delete": {"enabled": True},
                    },
                    "http": {"addr": f"127.0.0.1:{port}", "secret": "pullgate-tests"},
                },
                indent=2,
            )
            + "\n"
        )
        proc = _spawn(["docker-registry", "serve", str(config)], log, env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = _tail(_read(log), 20)
                break
            if _registry_answers(port):
                return proc, port
            time.sleep(0.05)
        else:
            _terminate(proc, STOP_TIMEOUT)
            raise DockerEnvError(
                f"docker-registry did not answer on 127.0.0.1:{port} within {timeout:.0f} s;"
                f" log tail:\n{_tail(_read(log), 20)}"
            )
    raise DockerEnvError(f"docker-registry failed to start; log tail:\n{last_error}")


def _registry_answers(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/v2/", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _ping(socket_path: Path) -> bool:
    conn = UnixHTTPConnection(socket_path, timeout=2.0)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read() == b"OK"
    except OSError:
        return False
    finally:
        conn.close()


def _wait_for_ping(
    socket_path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DockerEnvError(
                f"dockerd exited with {proc.returncode} before answering /_ping;"
                f" log tail ({log}):\n{_tail(_read(log), 30)}"
            )
        if socket_path.exists() and _ping(socket_path):
            return
        if time.monotonic() > deadline:
            raise DockerEnvError(
                f"dockerd did not answer GET /_ping on {socket_path} within {timeout:.0f} s;"
                f" log tail ({log}):\n{_tail(_read(log), 30)}"
            )
        time.sleep(0.05)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM, wait, SIGKILL. True when it ended without SIGKILL."""
    if proc.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        return False


def _proc_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]


def _kill_processes_referencing(needle: str) -> list[int]:
    """SIGKILL every process whose command line mentions `needle` (containerd, shims)."""
    killed: list[int] = []
    encoded = needle.encode()
    for pid in _proc_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if encoded in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def _kill_container_processes(data_root: Path) -> None:
    """SIGKILL processes in the cgroups of this daemon's containers (after a hard stop)."""
    containers = data_root / "containers"
    try:
        ids = {p.name for p in containers.iterdir() if len(p.name) == 64}
    except OSError:
        return
    if not ids:
        return
    for pid in _proc_pids():
        try:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if any(cid in cgroups for cid in ids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below any of `roots`, deepest first."""
    prefixes = [str(r) for r in roots]
    found: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        target = _unescape_mountinfo(fields[4])
        if any(target == p or target.startswith(p + "/") for p in prefixes):
            found.append(target)
    return sorted(set(found), key=lambda t: (t.count("/"), t), reverse=True)


def _unescape_mountinfo(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out = []
    i = 0
    while i < len(field_):
        if field_[i] == "\\" and field_[i + 1 : i + 4].isdigit() and i + 4 <= len(field_):
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def _unmount_under(*roots: Path) -> list[str]:
    """Unmount everything below `roots` (lazily if busy). Returns what is still mounted."""
    for _ in range(3):
        targets = _mounts_under(*roots)
        if not targets:
            return []
        for target in targets:
            result = subprocess.run(["umount", target], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    return _mounts_under(*roots)


def _cleanup_leftovers(base: Path, run_dir: Path) -> None:
    """Stop what a previous, unstopped environment in the same base left running."""
    pidfile = run_dir / "docker.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"dockerd" in cmdline and str(run_dir).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
    _kill_processes_referencing(str(run_dir / "exec"))
    _kill_processes_referencing(str(base / "registry.yml"))
    _kill_container_processes(base / "data")
    if not _unmount_under(base, run_dir):
        _remove_run_state(run_dir)


def _remove_run_state(run_dir: Path) -> None:
    """Remove the exec root, pidfile and socket of a stopped daemon.

    Stale pidfiles are not harmless here: where PID 1 does not reap orphans (as in some
    sandboxes), a killed containerd stays a zombie, its pid still "exists", and the next
    dockerd waits for that containerd instead of starting its own.
    """
    shutil.rmtree(run_dir / "exec", ignore_errors=True)
    for name in ("docker.pid", "docker.sock"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- docker CLI


def docker(
    env: DockerEnv,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI against the private daemon; raise DockerCommandError if `check`."""
    argv = [env.docker_cli, *args]
    result = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        text=True,
        env=dict(env.env),
        timeout=timeout,
        check=False,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise DockerCommandError(result.returncode, argv, result.stdout, result.stderr)
    return result


def docker_popen(
    env: DockerEnv,
    *args: str,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """Start the docker CLI against the private daemon (for `logs -f`, `attach`, `exec -i`)."""
    return subprocess.Popen(
        [env.docker_cli, *args],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=dict(env.env),
    )


def image_present(env: DockerEnv, ref: str) -> bool:
    """Whether the daemon holds `ref` (a name, name:tag, name@digest or image id)."""
    result = docker(env, "image", "inspect", "--format", "{{.Id}}", ref, check=False)
    if result.returncode == 0:
        return True
    if "No such image" in result.stderr or "no such image" in result.stderr.lower():
        return False
    raise DockerCommandError(result.returncode, result.args, result.stdout, result.stderr)


# --------------------------------------------------------------------------- seeding


def hub_repository(name: str) -> tuple[str, str]:
    """Split a Docker Hub style name into (repository path, tag).

    `alpine` -> (`library/alpine`, `latest`); `someuser/tool:1.0` -> (`someuser/tool`, `1.0`).
    A `docker.io/` (or `index.docker.io/`) prefix is accepted; other registries are not
    (the daemon only mirrors docker.io) and neither are digests.
    """
    rest = name
    for prefix in ("docker.io/", "index.docker.io/"):
        if rest.startswith(prefix):
            rest = rest[len(prefix) :]
    if "@" in rest:
        raise ValueError(f"{name!r}: seed by tag, not by digest")
    path, tag = rest, "latest"
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = rest.rsplit(":", 1)
    components = path.split("/")
    first = components[0]
    if len(components) > 1 and ("." in first or ":" in first or first == "localhost"):
        raise ValueError(f"{name!r}: only Docker Hub names can be seeded (the mirror is docker.io)")
    if len(components) == 1:
        components = ["library", *components]
    if not all(components) or path != path.lower() or not tag:
        raise ValueError(f"{name!r}: not a valid Docker Hub repository name")
    return "/".join(components), tag


def _image_tar(repository: str, tag: str, busybox: Path) -> bytes:
    """A rootfs tar: /bin/busybox, applet symlinks, /etc/passwd, /tmp, and a name file."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            info.mtime = now
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = now
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "root"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            link.mtime = now
            tar.addfile(link)
        add_file(
            "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        )
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        # Makes every seeded image (and so its layer and manifest digests) distinct.
        add_file("pullgate-image", f"docker.io/{repository}:{tag}\n".encode())
    return buf.getvalue()


def seed_image(env: DockerEnv, name: str, *, busybox: Path = BUSYBOX) -> SeededImage:
    """Push a tiny busybox image for Docker Hub name `name` to the local registry.

    Afterwards the daemon holds no tag of it, and `docker pull <name>` is served by the
    registry mirror. Returns the pushed manifest digest.
    """
    repository, tag = hub_repository(name)
    mirror_ref = f"{env.registry}/{repository}:{tag}"
    seed_dir = env.base / "seed"
    seed_dir.mkdir(exist_ok=True)
    tar_path = seed_dir / f"{repository.replace('/', '_')}_{tag}.tar"
    tar_path.write_bytes(_image_tar(repository, tag, busybox))

    image_id = docker(
        env,
        "import",
        "--change",
        'CMD ["/bin/sh"]',
        "--change",
        "ENV PATH=/bin",
        "--message",
        f"pullgate test image {repository}:{tag}",
        str(tar_path),
        mirror_ref,
    ).stdout.strip()
    try:
        docker(env, "push", mirror_ref)
        digests = json.loads(
            docker(env, "image", "inspect", "--format", "{{json .RepoDigests}}", mirror_ref).stdout
        )
    finally:
        # Remove the tag and the image, so the daemon holds nothing after seeding.
        docker(env, "image", "rm", "--force", mirror_ref, check=False)
        if image_id:
            docker(env, "image", "rm", "--force", image_id, check=False)
    prefix = f"{env.registry}/{repository}@"
    digest = next((d[len(prefix) :] for d in digests if d.startswith(prefix)), "")
    if not digest.startswith("sha256:"):
        raise DockerEnvError(f"push of {mirror_ref} reported no digest (RepoDigests={digests})")
    return SeededImage(
        name=name, repository=repository, tag=tag, digest=digest, mirror_ref=mirror_ref
    )
