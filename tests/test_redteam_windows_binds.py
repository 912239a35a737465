"""Red-team findings against ``containers.host_access`` on a Windows endpoint (Docker
Desktop on Windows): ways a bind or a local volume got past the Windows judgement
(agent.core.inspection.windows_binds, host_access.judge_windows) or the shim's wiring,
each pinned at the secure answer, and the false positives fixed alongside.

The machine is faked as in tests/test_windows_binds.py: every walked folder exists and is
no reparse point unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.core.inspection.host_access import (
    HostAccess,
    HostPath,
    Protection,
    from_container_config,
    from_volume,
    from_volume_create,
    judge,
    judge_windows,
    windows_lookups,
)
from agent.core.inspection.windows_binds import (
    Place,
    WindowsPathError,
    WindowsPathFacts,
    WindowsProtection,
    from_vm,
    system_places,
    windows_path,
)
from agent.daemon.bus import DecisionSink
from agent.daemon.shim import Shim, ShimConfig
from agent.platform import windows
from tests.policy_builders import policy
from tests.test_windows_shim_host_access import SID, _Daemon, _Machine, _send, _Transport

PROFILE = r"C:\Users\dev"
NEVER, NAMED = system_places({})
PROTECTION = WindowsProtection(profile=PROFILE, no_bind=NEVER, named=NAMED)


def facts_for(
    access: HostAccess, reparse: dict[str, int] | None = None, missing: tuple[str, ...] = ()
) -> dict[str, WindowsPathFacts]:
    """Every walked folder: exists, no reparse point, but those named (with their tag)."""
    reparse = reparse or {}
    return {
        p: WindowsPathFacts(p not in missing, p in reparse, reparse.get(p))
        for p in windows_lookups(access)
    }


def judged(access: HostAccess, **machine: Any) -> list[str]:
    return judge_windows(access, facts_for(access, **machine), PROTECTION, Protection())


def create(host: dict[str, Any]) -> HostAccess:
    return from_container_config({"Image": "alpine", "HostConfig": host}, windows=True)


def local_volume(**options: str) -> HostAccess:
    return from_volume_create({"Driver": "local", "DriverOpts": options}, windows=True)


JUNCTION = 0xA0000003  # IO_REPARSE_TAG_MOUNT_POINT


# ------------------------------------------------------------------ 1. lone surrogates


@pytest.mark.parametrize("source", [r"C:\Users\dev\j" + "\ud800", "C:/Users/dev/\udcff/x"])
def test_a_lone_surrogate_is_refused(source: str) -> None:
    """A JSON string may carry a lone UTF-16 surrogate (``"\\ud800"``): Python keeps it,
    Go's encoding/json (Desktop's proxy, the daemon) reads U+FFFD instead. The judge
    would look at a folder that does not exist (it passes as "not made yet") while the
    daemon binds ``j\\uFFFD``, a junction the user made to ``C:\\Windows``."""
    with pytest.raises(WindowsPathError, match="surrogate"):
        windows_path(source)
    for host in (
        {"Binds": [source + ":/x"]},
        {"Mounts": [{"Type": "bind", "Source": source, "Target": "/x"}]},
    ):
        access = create(host)
        missing = tuple(p for p in windows_lookups(access) if "\ud800" in p or "\udcff" in p)
        (found,) = judged(access, missing=missing)
        assert "surrogate" in found, found
    (found,) = judged(local_volume(type="none", o="bind", device=source))
    assert "surrogate" in found


def test_a_lone_surrogate_is_refused_on_linux_too() -> None:
    """The same differential on a Linux endpoint: the agent would resolve a name Python
    spells with the surrogate (``\\udcff`` is byte 0xff to ``os``), the daemon U+FFFD."""
    given = HostPath("/home/dev/\udcff", False, "bind", "-v /home/dev/\udcff:/x")
    (found,) = judge(HostAccess(paths=(given,)), {}, Protection())
    assert "surrogate" in found


def test_a_shim_refuses_a_lone_surrogate_from_the_json_body(tmp_path: Path) -> None:
    """End to end: the body carries ``\\ud800`` as JSON escapes (what Go reads as U+FFFD)
    and is refused before the daemon sees it."""
    daemon = _Daemon()
    answers: list[bytes] = []

    async def scenario() -> None:
        upstream, listen = tmp_path / "daemon.sock", tmp_path / "shim.sock"
        server = await asyncio.start_unix_server(daemon.serve, str(upstream))
        shim = Shim(
            ShimConfig(
                listen=Path(windows.shim_pipe(SID)), upstream=upstream, windows_paths=_Machine()
            ),
            lambda: policy(on_create="allow"),
            DecisionSink(),
            transport=_Transport(listen, upstream),
        )
        await shim.start()
        try:
            config = {"Image": "alpine", "HostConfig": {"Binds": ["C:\\Users\\dev\\j\ud800:/x"]}}
            assert "\\ud800" in json.dumps(config)
            answers.append(await _send(listen, "POST", "/v1.47/containers/create", config))
        finally:
            await shim.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert answers[0].startswith(b"HTTP/1.1 403") and b"surrogate" in answers[0], answers[0]
    assert not [r for r in daemon.requests if r.startswith("POST")]


# ------------------------------------------------------------------ 2. 9p volumes


@pytest.mark.parametrize(
    "options",
    [
        {"type": "9p", "device": "drvfs", "o": "trans=virtio,aname=drvfs;path=C:\\"},
        {"type": "9p", "device": "drvfsa", "o": "trans=virtio,aname=drvfs;path=C:\\"},
        {"type": "9P", "device": "wslg", "o": "trans=virtio"},
    ],
)
def test_a_9p_local_volume_is_refused(options: dict[str, str]) -> None:
    """Docker Desktop's WSL 2 VM reaches Windows' drives through 9p shares (drvfs's
    virtio tags ``drvfs``, and ``drvfsa`` served elevated): a local volume of type 9p
    mounts a whole drive, not a network share, so it is refused on a Windows endpoint."""
    (found,) = judged(local_volume(**options))
    assert "9p" in found and "Docker Desktop's VM" in found
    mount = {
        "Type": "volume",
        "Target": "/v",
        "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": options}},
    }
    (found,) = judged(create({"Mounts": [mount]}))
    assert "9p" in found
    (found,) = judged(from_volume("v", {"Driver": "local", "Options": options}, windows=True))
    assert "9p" in found


def test_network_shares_still_pass() -> None:
    """CIFS and NFS shares are reached with the credentials given, not the VM's: as on
    Linux they name no host path."""
    assert judged(local_volume(type="cifs", device="//fileserver/share", o="username=dev")) == []
    assert judged(local_volume(type="nfs", device=":/export", o="addr=10.0.0.5")) == []


# ------------------------------------------------------------------ 3. volumes and '..'


def test_a_described_volume_keeps_dotdot_for_the_walk() -> None:
    """A local volume's ``device`` goes to mount(2) as written: the VM's kernel follows
    ``j`` (a junction, a symbolic link in Desktop's drive share) before ``..``, so
    ``/run/desktop/mnt/host/c/Users/dev/j/../x`` is ``<j's target>\\..\\x``. Cleaned
    lexically it read ``C:\\Users\\dev\\x`` and ``j`` was never looked at (a volume made
    around the agent, then used through it)."""
    device = "/run/desktop/mnt/host/c/Users/dev/j/../x"
    options = {"type": "none", "o": "bind", "device": device}
    kept = {"Driver": "local", "Options": options}
    access = from_volume("v", kept, windows=True)
    assert r"C:\Users\dev\j" in windows_lookups(access)
    (found,) = judged(access, reparse={r"C:\Users\dev\j": JUNCTION})
    assert "junction" in found and r"C:\Users\dev\j" in found
    assert judged(access) == []  # a plain folder: the same place lexically
    # '..' above the drive leaves Desktop's drive share for the rest of the VM.
    options["device"] = "/run/desktop/mnt/host/c/../wsl/x"
    (found,) = judged(from_volume("v", kept, windows=True))
    assert "Docker Desktop's Linux VM" in found or "above the drive's root" in found
    options["device"] = "/run/desktop/mnt/host/wsl/../c/Users/dev/x"
    (found,) = judged(from_volume("v", kept, windows=True))
    assert "Docker Desktop's Linux VM" in found


def test_from_vm_without_cleaning() -> None:
    assert from_vm("/run/desktop/mnt/host/c/Users/dev/j/../x", lexical=False) == (
        r"C:\Users\dev\j\..\x"
    )
    assert from_vm("//host_mnt/d//a/./b/", lexical=False) == r"D:\a\b"
    assert from_vm("/run/desktop/mnt/host/x/../c/Windows", lexical=False) == (r"X:\..\c\Windows")
    assert from_vm("/run/desktop/mnt/host/wsl/../c", lexical=False) is None
    assert from_vm("/run/desktop/../desktop/mnt/host/c", lexical=False) is None


# ------------------------------------------------------------------ false positives


@pytest.mark.parametrize(
    "name", ["my~project", "proj~", "~backup", "notes~old.txt", "a~b~c", "LONGNAME~1.txt"]
)
def test_a_tilde_that_cannot_be_a_short_name_passes(name: str) -> None:
    """Only an 8.3-shaped name with ``~`` and a digit can be a short name (``PROGRA~1``,
    ``DOCKER~1.CFG``); a folder called ``my~project`` is just a folder."""
    assert judged(create({"Binds": [rf"C:\Users\dev\{name}:/x"]})) == []


@pytest.mark.parametrize("name", ["PROJEC~1", "docker~1", "DOCKER~1.CFG", "AB12~10", "~1"])
def test_short_names_stay_refused(name: str) -> None:
    (found,) = judged(create({"Binds": [rf"C:\Users\dev\{name}:/x"]}))
    assert "short (8.3) name" in found


def test_the_agent_state_place_is_kept_however_it_is_spelt() -> None:
    """A never-bind place is matched by its long name; one with a '~' that is not a short
    name (a state folder ``Pull~gate``) still counts."""
    protection = WindowsProtection(
        profile=PROFILE,
        allowed=(r"D:\data",),
        no_bind=(Place(r"D:\data\Pull~gate", "Pullgate's own files"),),
    )
    access = create({"Binds": [r"D:\data\Pull~gate\state:/s"]})
    (found,) = judge_windows(access, facts_for(access), protection, Protection())
    assert "Pullgate's own files" in found


# ------------------------------------------------------------------ 4. the daemon's lower case


@pytest.mark.parametrize(
    "source",
    [
        "C:\\Users\\dev\\.doc\u212aer",  # KELVIN SIGN: Go lowercases it to 'k', NTFS does not
        "C:\\Users\\dev\\.wslconf\u0130g",  # 'İ' is 'i' to Go's ToLower
        "C:\\Users\\dev\\AppData\\Local\\Doc\u212aer\\wsl",
        "C:\\Users\\dev\\\u212a\\x",  # 'k' beside it: a junction the walk never looked at
        "C:\\Users\\dev\\\u2126mega",  # OHM SIGN: 'ω' to Go, another name to NTFS
    ],
)
def test_a_name_the_windows_daemon_lowercases_into_another_is_refused(source: str) -> None:
    """moby's Windows parser (Windows containers, the daemon running as SYSTEM) takes a
    ``-v`` string's source from ``strings.ToLower(raw)``. NTFS compares by upper case,
    where the Kelvin sign is not ``K``: the judge read ``.doc\\u212aer`` (not .docker,
    or a missing folder) while the daemon bound ``.docker`` (or the junction ``k``)."""
    (found,) = judged(create({"Binds": [source + ":C:\\x"]}))
    assert "lower case is another name" in found, found


def test_ordinary_non_ascii_names_pass() -> None:
    for name in ("Projekt-Übersicht", "straße", "Ωmega", "проект", "δοκιμή"):
        assert judged(create({"Binds": [rf"C:\Users\dev\{name}:/x"]})) == [], name


@pytest.mark.xfail(
    strict=True,
    reason="A folder the user marked case-sensitive (fsutil file setCaseSensitiveInfo) may "
    "hold 'J' (plain) and 'j' (a junction); moby's Windows parser lowercases a -v string, "
    "so Windows containers bind 'j' while the walk looked at 'J'. Catching it needs each "
    "walked folder's case-sensitivity (FILE_CASE_SENSITIVE_INFORMATION) or a walk of the "
    "lowercased spelling too: a machine fact windows_host_paths does not read yet.",
)
def test_a_case_sensitive_folder_and_the_daemons_lower_case() -> None:
    access = create({"Binds": [r"C:\Users\dev\p\J\x:C:\x"]})
    assert r"C:\Users\dev\p\j" in windows_lookups(access)
