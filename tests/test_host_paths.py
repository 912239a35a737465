"""agent.platform.host_paths: host paths resolved as the daemon's side sees them, and the
access rule of containers.host_access on real files (agent.core.inspection.host_access)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.decision import Identity
from agent.core.dockerd_hosts import dockerd_paths
from agent.core.inspection.host_access import (
    HostAccess,
    HostPath,
    Protection,
    Requester,
    judge,
)
from agent.core.peer import PeerInfo
from agent.core.policy.default import default_policy
from agent.daemon.bus import DecisionSink
from agent.daemon.shim import Shim, ShimConfig
from agent.platform import host_paths
from agent.platform.peer import peer_groups

USER = Requester(uid=4242, gids=frozenset({4242}))


def facts(path: Path, daemon: Path | None = None) -> host_paths.PathFacts:
    return host_paths.examine([str(path)], daemon=daemon)[str(path)]


def test_links_are_followed_as_the_kernel_follows_them(tmp_path: Path) -> None:
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "abs").symlink_to(tmp_path / "real")
    (tmp_path / "rel").symlink_to("real/deep")
    (tmp_path / "up").symlink_to("rel/..")  # '..' after a link: the link's parent
    (tmp_path / "root").symlink_to("/")
    assert facts(tmp_path / "abs" / "deep").resolved == str(tmp_path / "real" / "deep")
    assert facts(tmp_path / "rel").resolved == str(tmp_path / "real" / "deep")
    assert facts(tmp_path / "up").resolved == str(tmp_path / "real")
    assert facts(tmp_path / "root").resolved == "/"
    found = facts(tmp_path / "rel")
    assert found.exists and len(found.chain) == len(found.resolved.split("/"))


def test_missing_parts_and_loops_are_kept_as_written(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    loop = facts(tmp_path / "a" / "x")
    assert not loop.exists
    missing = facts(tmp_path / "nothing" / "here" / ".." / "there")
    assert missing.resolved == str(tmp_path / "nothing" / "there") and not missing.exists
    assert host_paths.examine(["relative", "/x\0y"], daemon=None) == {}


def test_paths_resolve_beneath_the_daemon_listeners_root(tmp_path: Path) -> None:
    """With a listener, the walk starts at /proc/PID/root (here: the test's own root)."""
    sock_path = tmp_path / "daemon.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        server.listen(1)
        (tmp_path / "link").symlink_to("/")
        assert facts(tmp_path / "link", daemon=sock_path).resolved == "/"


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every user can search (pytest's own tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="pg-host-paths-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_the_access_rule_on_real_modes(open_tmp: Path) -> None:
    tmp_path = open_tmp
    private = tmp_path / "tmux-0"
    private.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chown(mine, USER.uid, USER.uid)

    def problems(path: Path, *, read_only: bool = False, who: Requester = USER) -> list[str]:
        bind = HostPath(str(path), read_only, "bind", f"-v {path}:/x")
        found = host_paths.examine([bind.lookup], daemon=None)
        return judge(HostAccess(paths=(bind,)), found, Protection(), who)

    assert "beyond" in problems(private / "default")[0]
    assert "not yours" in problems(private)[0]
    assert "not yours" in problems(private, read_only=True)[0]
    assert problems(mine) == [] and problems(mine / "new-dir") == []
    # A shared directory holds what is not the user's (root's tmux-0 in /tmp): only
    # their own directory may be bound, and only there may Docker make a missing one.
    assert "not yours" in problems(shared)[0]
    assert "make it yourself" in problems(shared / "tmux-0")[0]
    assert "make it yourself" in problems(tmp_path / "new-dir")[0]
    assert "not yours" in problems(tmp_path, read_only=True)[0]
    sock_path = mine / "agent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        os.chown(sock_path, 0, 0)
        os.chmod(sock_path, 0o755)  # root's socket, umask 022: connect needs write
        assert "not yours" in problems(sock_path, read_only=True)[0]
    assert problems(private, who=Requester(0, frozenset({0}))) == []
    # A client in a container has whatever uid the container was started with.
    for uid in (0, USER.uid):
        contained = Requester(uid, frozenset({uid}), contained=True)
        assert problems(mine, who=contained)
    group = Requester(5555, frozenset({5555, 4242}))
    os.chmod(mine, 0o770)
    assert "not yours" in problems(mine, who=group)[0]
    assert problems(Path("/usr/share"), read_only=True) == []  # the system's, read-only
    assert "writable" in problems(Path("/usr/share"))[0]


def test_requester_reads_the_process_groups() -> None:
    me = host_paths.requester(os.getpid(), os.getuid(), os.getgid())
    assert me is not None and me.uid == os.getuid() and os.getgid() in me.gids
    assert not me.contained
    assert host_paths.requester(None, None, None) is None


@pytest.mark.parametrize(
    ("argv", "config", "expected"),
    [
        (["dockerd", "--exec-root", "/tmp/x/exec"], None, ["/tmp/x/exec"]),
        (["dockerd", "--data-root=/srv/docker", "-H", "unix:///tmp/d.sock"], None,
         ["/srv/docker", "/tmp/d.sock"]),
        (["dockerd"], {"exec-root": "/e", "containerd": "/c/d.sock"}, ["/e", "/c/d.sock"]),
        (["dockerd", "-H", "tcp://0.0.0.0:2375", "--pidfile", "relative"], None, []),
    ],
)  # fmt: skip
def test_dockerd_paths(
    argv: list[str], config: dict[str, object] | None, expected: list[str]
) -> None:
    assert dockerd_paths(argv, config) == expected


def test_a_client_inside_a_container_has_no_ones_sign_in(tmp_path: Path) -> None:
    """A container started with --user <a signed-in user's uid> and the agent's socket
    mounted must not borrow that user's identity (require_sign_in, group rules)."""

    signed_in = Identity(email="admin@acme.example", groups=frozenset({"admins"}))

    class Store:
        def identity_for(self, uid: int | str | None) -> Identity | None:
            return signed_in if uid == 4242 else None

    shim = Shim(
        ShimConfig(listen=tmp_path / "a.sock", upstream=tmp_path / "d.sock"),
        default_policy,
        DecisionSink(),
        identities=Store(),
    )
    assert shim.identity_of(PeerInfo(pid=1, uid=4242)) == signed_in
    assert shim.identity_of(PeerInfo(pid=1, uid=4242, contained=True)) is None
    me = host_paths.requester(os.getpid(), 0, 0)
    assert me is not None and not me.contained


def test_peer_groups_are_the_kernels_at_connect() -> None:
    """SO_PEERGROUPS: the groups the client had when it connected (a PID can be reused
    by the time /proc is read)."""

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        groups = peer_groups(a)
    assert groups is not None and set(os.getgroups()) <= groups | {os.getgid()}
