"""Where a dockerd listens, from its command line and ``daemon.json``: for the takeover
check (``pullgate doctor``), which must notice any listener besides the one the agent
forwards to (a ``-H tcp://...`` in ``DOCKER_OPTS``, ``hosts`` in ``daemon.json``): each is a
way to the daemon around the policy.

Pure: the caller reads ``/proc/PID/cmdline`` and the file. dockerd's own rules: ``-H`` and
``--host`` take a value (``-H X``, ``-HX``, ``-H=X``, ``--host X``, ``--host=X``), may be
repeated, and ``hosts`` in ``daemon.json`` adds to them (dockerd refuses both at once, but
a listener named either way counts here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["dockerd_hosts", "dockerd_paths", "extra_listeners", "flag_values"]

_SYSTEMD_FD = "fd://"


def flag_values(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """Values of long flags ``--name X`` / ``--name=X`` (and ``-g X`` style short ones)."""
    out: list[str] = []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in names and i + 1 < len(args):
            out.append(args[i + 1])
            i += 2
            continue
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                out.append(arg[len(name) + 1 :])
        i += 1
    return out


#: dockerd's flags and ``daemon.json`` keys naming where it keeps what no container may
#: bind: its exec root (containerd's and the shims' sockets), data root, pid file, the
#: containerd it uses, its config file.
_PATH_FLAGS = (
    ("--exec-root", "exec-root"),
    ("--data-root", "data-root"),
    ("--graph", "graph"),
    ("-g", "graph"),
    ("--pidfile", "pidfile"),
    ("-p", "pidfile"),
    ("--containerd", "containerd"),
    ("--config-file", ""),
)


def dockerd_paths(argv: Sequence[str], daemon_json: Mapping[str, object] | None) -> list[str]:
    """The absolute paths dockerd's command line and ``daemon.json`` name for its own
    state and sockets (exec root, data root, pid file, containerd, config file, unix
    ``-H`` sockets), in order: what ``containers.host_access`` keeps out of binds."""
    out: list[str] = []
    for flag, key in _PATH_FLAGS:
        out += flag_values(argv, (flag,))
        value = daemon_json.get(key) if daemon_json is not None and key else None
        if isinstance(value, str):
            out.append(value)
    for host in dockerd_hosts(argv, daemon_json):
        out.append(host.removeprefix("unix://"))
    return [p for p in out if p.startswith("/")]


def dockerd_hosts(argv: Sequence[str], daemon_json: Mapping[str, object] | None) -> list[str]:
    """Every ``-H``/``--host`` value of ``argv`` (after the program name) and ``hosts`` of
    ``daemon.json``, in order."""
    hosts: list[str] = []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in ("-H", "--host"):
            if i + 1 < len(args):
                hosts.append(args[i + 1])
            i += 2
            continue
        if arg.startswith("--host="):
            hosts.append(arg[len("--host=") :])
        elif arg.startswith("-H") and not arg.startswith("--"):
            hosts.append(arg[2:].removeprefix("="))
        i += 1
    configured = daemon_json.get("hosts") if daemon_json is not None else None
    if isinstance(configured, list):
        hosts += [h for h in configured if isinstance(h, str)]
    elif isinstance(configured, str):
        hosts.append(configured)
    return hosts


def extra_listeners(hosts: Sequence[str], upstream: str) -> list[str]:
    """The listeners other than systemd's socket (``fd://``, the one the takeover moves)
    and ``upstream`` (``/run/pullgate/dockerd.sock``, as a path or a ``unix://`` URL)."""
    allowed = {_SYSTEMD_FD, upstream, f"unix://{upstream}"}
    return [h for h in hosts if h.strip() not in allowed and not h.startswith(f"{_SYSTEMD_FD}")]
