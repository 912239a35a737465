"""``containers.host_access`` on a Windows endpoint (Docker Desktop on Windows), pure: binds
read as the docker CLI on Windows sends them (``Binds`` strings as its split gives them,
``Mounts`` entries, local volumes' ``device``) and judged with Windows rules
(agent.core.inspection.windows_binds, host_access.judge_windows) against the facts the
machine would give (agent.platform.windows_host_paths, faked: there is no Windows here).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from agent.core.inspection.host_access import (
    HostAccess,
    Protection,
    from_container_config,
    from_volume,
    from_volume_create,
    judge_windows,
    windows_lookups,
)
from agent.core.inspection.windows_binds import (
    BindSpecError,
    Place,
    WindowsBind,
    WindowsPathError,
    WindowsPathFacts,
    WindowsProtection,
    from_vm,
    read_bind,
    system_places,
    walked,
    windows_path,
)
from agent.core.policy.document import PolicyError
from tests.policy_builders import policy

PROFILE = r"C:\Users\dev"
NEVER, NAMED = system_places({})
PROTECTION = WindowsProtection(
    profile=PROFILE,
    allowed=(r"D:\datasets", "/srv/data"),
    no_bind=(*NEVER, Place(r"C:\ProgramData\Pullgate\State", "Pullgate's own files")),
    named=NAMED,
)
VM_PATH = "Docker Desktop's Linux VM"


def machine(
    access: HostAccess,
    *,
    reparse: Iterable[str] = (),
    missing: Iterable[str] = (),
    unknown: Iterable[str] = (),
) -> dict[str, WindowsPathFacts]:
    """The facts the platform would give for ``access``: every walked folder exists and
    is no reparse point, but those named."""
    reparse, missing, unknown = set(reparse), set(missing), set(unknown)
    return {
        path: WindowsPathFacts(exists=path not in missing, reparse=path in reparse)
        for path in windows_lookups(access)
        if path not in unknown
    }


def judged(
    access: HostAccess,
    protection: WindowsProtection = PROTECTION,
    *,
    reparse: Iterable[str] = (),
    missing: Iterable[str] = (),
    unknown: Iterable[str] = (),
) -> list[str]:
    facts = machine(access, reparse=reparse, missing=missing, unknown=unknown)
    return judge_windows(access, facts, protection, Protection())


def problems(host: dict[str, Any]) -> list[str]:
    access = from_container_config({"Image": "alpine", "HostConfig": host}, windows=True)
    return judged(access)


def binds(*raw: str) -> dict[str, Any]:
    return {"Binds": list(raw)}


def bind_mount(source: str, target: str = "/app") -> dict[str, Any]:
    return {"Mounts": [{"Type": "bind", "Source": source, "Target": target}]}


def bind_volume(device: str, **more: str) -> dict[str, Any]:
    options = {"type": "none", "o": "bind", "device": device, **more}
    config = {"DriverConfig": {"Name": "local", "Options": options}}
    return {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/v", "VolumeOptions": config}]}


# ------------------------------------------------------------------ what passes


@pytest.mark.parametrize(
    "host",
    [
        binds(r"C:\Users\dev\proj:/app"),  # PowerShell's ${PWD}, cmd's %cd%
        binds(r"c:\users\DEV\Proj:/app:ro"),  # drive and names in any letter case
        binds("C:/Users/dev/proj:/app"),  # forward slashes
        binds(r"C:\Users\dev\proj\:/app:rw"),  # a trailing separator
        binds(r"C:\\Users\\dev\\proj:/app"),  # doubled separators, folded as Windows does
        binds(r"C:\Users\dev\proj\sub\..\other:/app"),  # '..' that stays inside
        binds(r"C:\Users\dev\proj:C:\app"),  # a Windows container's target
        binds(r"C:\Users\dev\.docker-cache:/c"),  # not .docker
        binds(r"C:\Users\dev\AppData\Local\npm-cache:/n"),  # AppData, not Docker's
        binds(r"C:\Users\dev\Documents\Docker stuff:/d"),  # spaces inside a name
        binds(r"D:\datasets\imagenet:/data:ro"),  # an allowed folder
        binds("d:/DATASETS/x:/d"),
        binds("data:/data", "/anonymous", "cache:/c:ro"),  # volumes, judged as volumes
        bind_mount(r"C:\Users\dev\proj"),
        bind_mount("c:/users/dev/proj"),
        bind_volume(r"C:\Users\dev\data"),
        {"Mounts": [{"Type": "tmpfs", "Target": "/t"}, {"Type": "volume", "Target": "/v"}]},
        {"Devices": [{"PathOnHost": "/dev/fuse"}], "CapAdd": ["SYS_PTRACE"]},
    ],
)
def test_project_binds_in_the_profile_pass(host: dict[str, Any]) -> None:
    assert problems(host) == []


def test_a_folder_not_made_yet_passes() -> None:
    """Docker Desktop makes a missing bind source, as the user (nothing of theirs could be
    a junction there yet)."""
    access = from_container_config({"HostConfig": binds(r"C:\Users\dev\new\dir:/x")}, windows=True)
    assert judged(access, missing=[r"C:\Users\dev\new", r"C:\Users\dev\new\dir"]) == []


# ------------------------------------------------------------------ what is refused


@pytest.mark.parametrize(
    ("host", "why"),
    [
        # The VM's file system: its daemon, its data, every drive and WSL's distros.
        (binds("//var/run/docker.sock:/var/run/docker.sock"), VM_PATH),  # Git Bash
        (binds("/var/run/docker.sock:/var/run/docker.sock"), VM_PATH),
        (binds("/var/run/docker.sock.raw:/var/run/docker.sock"), VM_PATH),
        (binds("/run/desktop/mnt/host/c/Users/dev/proj:/app"), VM_PATH),
        (binds("/host_mnt/c/Users/dev/proj:/app"), VM_PATH),
        (binds("/mnt/wsl/docker-desktop-bind-mounts/Ubuntu/abc:/x"), VM_PATH),
        (binds("/var/lib/docker:/d"), VM_PATH),
        (binds("/:/host"), VM_PATH),
        (binds("/c/Users/dev/proj:/app"), VM_PATH),  # compose's converted Windows path
        (binds("//c/Users/dev/proj:/app"), VM_PATH),
        (bind_mount("/var/run/docker.sock"), VM_PATH),
        (bind_volume("/"), VM_PATH),
        # Pipes, devices, network paths.
        (binds(r"\\.\pipe\docker_engine:\\.\pipe\docker_engine"), "named pipe"),
        (binds("//./pipe/docker_engine:/var/run/docker.sock"), "named pipe"),
        (bind_mount(r"\\.\PIPE\docker_engine"), "named pipe"),
        (
            {"Mounts": [{"Type": "npipe", "Source": r"\\.\pipe\docker_engine", "Target": "/p"}]},
            "--mount type=npipe",
        ),
        (binds(r"\\?\C:\Users\dev\proj:/app"), "device path"),
        (binds(r"\\.\C:\Users\dev\proj:/app"), "device path"),
        (binds(r"\\server\share\proj:/app"), "network (UNC)"),
        (binds(r"\\wsl.localhost\Ubuntu\home\dev:/app"), "network (UNC)"),
        # Relative paths.
        (binds(r"\Users\dev\proj:/app"), "no drive letter"),
        (binds("C:proj:/app"), "drive's current folder"),
        (binds(r".\proj:/app"), "relative path"),
        (binds("~/proj:/app"), "relative path"),
        (binds(r"proj\sub:/app"), "relative path"),
        (bind_volume("data"), "relative path"),
        # Whole drives, Windows, the machine's program folders.
        (binds(r"C:\:/host"), "whole C: drive"),
        (binds("c:/:/host"), "whole C: drive"),
        (binds(r"D:\:/d"), "whole D: drive"),
        (binds(r"C:\Windows:/w:ro"), "Windows' own folder"),
        (binds(r"c:\WINDOWS\System32\config:/s"), "Windows' own folder"),
        (bind_volume(r"C:\Windows"), "Windows' own folder"),
        (binds(r"C:\ProgramData:/p"), r"holds C:\ProgramData\Pullgate"),
        (binds(r"C:\ProgramData\Microsoft:/m"), "ProgramData"),
        (binds(r"C:\ProgramData\Pullgate\State:/s:ro"), "Pullgate's own files"),
        (binds(r"C:\ProgramData\Docker:/d"), "Windows Docker daemon's data"),
        (binds(r"C:\ProgramData\DockerDesktop:/d"), "Docker Desktop's machine-wide settings"),
        (binds(r"C:\Program Files:/p"), r"holds C:\Program Files\Docker"),
        (binds(r"C:\Program Files\Git:/g"), "in Program Files"),
        (binds(r"C:\Program Files (x86)\Tool:/t"), "Program Files (x86)"),
        # The profile's own protected places, and what holds them.
        (binds(r"C:\Users\dev:/home/dev"), r"holds C:\Users\dev\.docker"),
        (binds(r"C:\Users\dev\.docker:/root/.docker:ro"), "contexts, settings and credentials"),
        (binds(r"C:\users\DEV\.DOCKER\contexts:/c"), r"in C:\Users\dev\.docker"),
        (binds(r"C:\Users\dev\.wslconfig:/w"), "WSL 2's settings"),
        (binds(r"C:\Users\dev\AppData:/a"), r"holds C:\Users\dev\AppData\Local\Docker"),
        (binds(r"C:\Users\dev\AppData\Local\Docker\wsl:/w"), "Docker Desktop's VM"),
        (binds(r"C:\Users\dev\AppData\Roaming\Docker:/s"), "Docker Desktop's settings"),
        # Other users, other folders.
        (binds(r"C:\Users\other\proj:/app"), "another user's profile"),
        (binds(r"C:\Users\dev2\proj:/app"), "another user's profile"),  # shares a prefix
        (binds(r"C:\Users\dev\..\other\proj:/app"), "another user's profile"),
        (binds(r"C:\Users:/u"), r"holds C:\Users\dev\.docker"),
        (binds(r"D:\other:/x"), r"outside your profile (C:\Users\dev)"),
        (binds(r"E:\datasets\x:/x"), "outside your profile"),  # the allowed one is on D:
        # What Windows would read otherwise, or not as written.
        (binds(r"C:\Users\dev\..\..\..\x:/x"), "above the drive's root"),
        (bind_mount(r"C:\Users\dev\proj:secret"), "alternate data stream"),
        (binds(r"C:\Users\dev\proj.:/app"), "ending in a dot or a space"),
        (binds(r"C:\Users\dev\proj :/app"), "ending in a dot or a space"),
        (binds(r"C:\Users\dev\PROJEC~1:/app"), "short (8.3) name"),
        (binds(r"C:\Users\dev\CON:/x"), "Windows device"),
        (binds(r"C:\Users\dev\nul.txt:/x"), "Windows device"),
        (binds(r"C:\Users\dev\com1:/x"), "Windows device"),
        (binds(r"C:\Users\dev\LPT¹:/x"), "Windows device"),
        (binds(r"C:\Users\dev\a<b:/x"), "does not allow"),
        (binds(r"C:\Users\dev\CON\..\proj:/x"), "Windows device"),  # even if '..' drops it
        # -v strings the CLI would not send.
        (binds("x:::/y"), "empty section"),
        (binds("ab:cd:ef:gh"), "too many colons"),
        # The rest of host_access stays as on Linux.
        ({"Privileged": True}, "--privileged"),
        ({"PidMode": "host"}, "--pid=host"),
        ({"Devices": [{"PathOnHost": "/dev/sda"}]}, "host device"),
        (bind_volume("/proc", type="proc"), "local volume of type proc"),
    ],
)
def test_everything_else_is_refused_with_its_reason(host: dict[str, Any], why: str) -> None:
    found = problems(host)
    assert len(found) == 1 and why in found[0], found


def test_junctions_and_links_on_the_way_are_refused() -> None:
    """A junction in the profile leading to C:\\ would pass by its name: every folder
    the path walks through is looked at, those '..' leaves again too."""
    link = r"C:\Users\dev\link"
    access = from_container_config({"HostConfig": binds(link + r"\x:/x")}, windows=True)
    (found,) = judged(access, reparse=[link])
    assert "junction, symbolic link or mount point" in found and link in found
    back = from_container_config({"HostConfig": binds(link + r"\..\proj:/x")}, windows=True)
    assert windows_lookups(back) == [r"C:\Users", PROFILE, link, r"C:\Users\dev\proj"]
    (found,) = judged(back, reparse=[link])
    assert link in found
    assert judged(back) == []  # the same path, no junction: lexical is what Windows does


@pytest.mark.parametrize(
    ("tag", "passes"),
    [
        (0x9000601A, True),  # IO_REPARSE_TAG_CLOUD_6: OneDrive's Files On-Demand folder
        (0x9000001A, True),  # IO_REPARSE_TAG_CLOUD
        (0xA0000003, False),  # IO_REPARSE_TAG_MOUNT_POINT: a junction, a mounted volume
        (0xA000000C, False),  # IO_REPARSE_TAG_SYMLINK
        (0xA000001D, False),  # IO_REPARSE_TAG_LX_SYMLINK (WSL's)
        (0x80000013, False),  # IO_REPARSE_TAG_DEDUP: not known to be harmless, so refused
        (None, False),  # a tag that could not be read
    ],
)
def test_only_cloud_placeholders_pass_among_reparse_points(tag: int | None, passes: bool) -> None:
    """Known folder move puts Documents in OneDrive, whose folders are all cloud
    placeholders: they hold their own content. Every other reparse point may redirect."""
    source = r"C:\Users\dev\OneDrive - Acme\Documents\proj"
    access = from_container_config({"HostConfig": binds(source + ":/app")}, windows=True)
    facts = machine(access)
    facts[r"C:\Users\dev\OneDrive - Acme"] = WindowsPathFacts(True, reparse=True, tag=tag)
    found = judge_windows(access, facts, PROTECTION, Protection())
    if passes:
        assert found == []
    else:
        assert len(found) == 1 and "junction, symbolic link or mount point" in found[0]


def test_a_folder_that_could_not_be_looked_at_is_refused() -> None:
    access = from_container_config({"HostConfig": binds(r"C:\Users\dev\p:/p")}, windows=True)
    (found,) = judged(access, unknown=[r"C:\Users"])
    assert "could not be looked at" in found


def test_without_a_profile_only_allowed_folders_pass() -> None:
    access = from_container_config(
        {"HostConfig": binds(r"C:\Users\dev\proj:/a", r"D:\datasets\x:/d")}, windows=True
    )
    lost = WindowsProtection(allowed=PROTECTION.allowed, no_bind=NEVER, named=NAMED)
    (found,) = judged(access, lost)
    assert r"C:\Users\dev\proj" in found and "profile folder could not be found" in found


def test_names_compare_as_ntfs_compares_them() -> None:
    """One character for one: 'ß' is not 'SS' (another name), but any case of a letter
    is the same name."""
    mine = WindowsProtection(profile=r"C:\Users\straße", no_bind=NEVER)
    other = from_container_config({"HostConfig": binds(r"C:\Users\STRASSE\p:/p")}, windows=True)
    same = from_container_config({"HostConfig": binds(r"C:\USERS\STRAßE\p:/p")}, windows=True)
    assert judged(other, mine) and judged(same, mine) == []


def test_system_places_come_from_the_machines_environment() -> None:
    never, named = system_places(
        {"SystemRoot": r"D:\WINNT", "ProgramData": r"E:\Data", "ProgramFiles": "relative"}
    )
    assert [p.path for p in never][:3] == [r"D:\WINNT", r"E:\Data\Pullgate", r"E:\Data\Docker"]
    assert r"C:\Program Files\Docker" in [p.path for p in never]  # a relative value: default
    protection = WindowsProtection(profile=r"D:\WINNT\profiles\dev", no_bind=never, named=named)
    access = from_container_config(
        {"HostConfig": binds(r"D:\WINNT\profiles\dev\p:/p")}, windows=True
    )
    (found,) = judged(access, protection)
    assert "Windows' own folder" in found


# ------------------------------------------------------------------ what the daemon keeps


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("/run/desktop/mnt/host/c/Users/dev/proj", None),  # WSL 2: C:\Users\dev\proj
        ("/host_mnt/c/Users/dev/proj", None),  # Hyper-V
        (r"C:\Users\dev\proj", None),  # should Desktop describe it as written
        ("/run/desktop/mnt/host/d/datasets/x", None),
        ("/run/desktop/mnt/host/c/Windows", "Windows' own folder"),
        ("/run/desktop/mnt/host/c", "whole C: drive"),
        ("/run/desktop/mnt/host/c/Users/dev/.docker", ".docker"),
        ("/run/desktop/mnt/host/c/Users/dev/../../../../var/run/docker.sock", VM_PATH),
        ("/run/desktop/mnt/host/c/Users/dev/a\\..\\..\\other", VM_PATH),  # one name there
        ("/run/desktop/mnt/host/wsl/docker-desktop-bind-mounts/Ubuntu/abc", VM_PATH),
        ("/run/desktop/mnt/host/C/Users/dev/proj", VM_PATH),  # no such drive folder
        ("/var/run/docker.sock", VM_PATH),
    ],
)
def test_a_described_container_is_judged_by_the_drive_path_it_binds(
    source: str, why: str | None
) -> None:
    """A (re)start judges the container as the daemon keeps it: Desktop's VM path of a
    drive path is that drive path; any other path of the VM stays refused."""
    for described in (
        {"HostConfig": {"Binds": [f"{source}:/app"]}},
        {"HostConfig": {}, "Mounts": [{"Type": "bind", "Source": source, "RW": True}]},
        {"HostConfig": bind_mount(source)},
    ):
        access = from_container_config(described, described=True, windows=True)
        found = judged(access)
        if why is None:
            assert found == [], (described, found)
        else:
            assert len(found) == 1 and why in found[0], (described, found)


def test_volumes_with_a_device_get_the_same_rules() -> None:
    def create(device: str) -> list[str]:
        opts = {"type": "none", "o": "bind", "device": device}
        return judged(from_volume_create({"Driver": "local", "DriverOpts": opts}, windows=True))

    assert create(r"C:\Users\dev\data") == []
    assert VM_PATH in create("/")[0] and "Windows' own folder" in create(r"C:\Windows")[0]
    assert VM_PATH in create("/run/desktop/mnt/host/c/Users/dev/data")[0]  # as written
    assert "relative path" in create("data")[0]
    options = {"o": "bind", "device": "/host_mnt/c/Users/dev/data"}
    kept = {"Driver": "local", "Options": options}
    assert judged(from_volume("v", kept, windows=True)) == []  # as the daemon describes it
    options["device"] = "/run/desktop/mnt/host/c/ProgramData/Pullgate"
    assert "Pullgate's own files" in judged(from_volume("v", kept, windows=True))[0]


def test_linux_reading_is_unchanged() -> None:
    """Without ``windows`` a Windows-looking bind reads as before: dockerd's Linux split,
    where ``C`` is a volume name."""
    access = from_container_config({"HostConfig": binds(r"C:\Users\dev\proj:/app")})
    assert access == HostAccess(volumes=("C",))
    assert from_container_config({"HostConfig": binds(r"C:\Users\dev\proj:/app")}, windows=True)


# ------------------------------------------------------------------ the pieces


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (r"C:\Users\dev\proj:/app", WindowsBind(source=r"C:\Users\dev\proj")),
        (r"C:\Users\dev\proj:/app:ro", WindowsBind(source=r"C:\Users\dev\proj", read_only=True)),
        (r"C:\src:D:\dst:rw", WindowsBind(source=r"C:\src")),
        ("C:/x:/app", WindowsBind(source="C:/x", linux_volume="C")),
        ("C:/app", WindowsBind(linux_volume="C")),  # an anonymous volume, or volume C
        (r"C:\app", WindowsBind()),  # an anonymous volume at C:\app (Windows containers)
        ("/app", WindowsBind()),
        ("ab", WindowsBind()),
        ("data:/data", WindowsBind(volume="data", linux_volume="data")),
        ("//var/run/docker.sock:/s", WindowsBind(source="//var/run/docker.sock")),
        (r"\\.\pipe\a:\\.\pipe\b", WindowsBind(source=r"\\.\pipe\a")),
        ("a::b", WindowsBind(source="a:")),  # the CLI keeps a drive's colon
        ("a:b:c:d:e", WindowsBind(source="a:b")),  # each single letter's too: a:b, c:d, e
        ("a:", WindowsBind()),  # two characters: a container path alone
        ("~/x:/x", WindowsBind(source="~/x")),
        ("x/y:/z", WindowsBind(source="x/y")),
    ],
)
def test_v_strings_split_as_the_windows_cli_splits_them(raw: str, read: WindowsBind) -> None:
    assert read_bind(raw) == read


@pytest.mark.parametrize("raw", ["x:::/y", ":/y", ":::", "ab:cd:ef:gh", "/a:/b:ro:z"])
def test_v_strings_the_cli_refuses(raw: str) -> None:
    with pytest.raises(BindSpecError):
        read_bind(raw)


@pytest.mark.parametrize(
    ("source", "canonical", "walk"),
    [
        (r"C:\Users\dev", r"C:\Users\dev", [r"C:\Users", r"C:\Users\dev"]),
        (
            "c:/Users//dev/./x/",
            r"C:\Users\dev\x",
            [r"C:\Users", r"C:\Users\dev", r"C:\Users\dev\x"],
        ),
        (r"C:\a\b\..\c", r"C:\a\c", [r"C:\a", r"C:\a\b", r"C:\a\c"]),
        ("C:/", "C:\\", []),
    ],
)
def test_drive_paths_resolve_lexically(source: str, canonical: str, walk: list[str]) -> None:
    path = windows_path(source)
    assert str(path) == canonical and list(path.walked) == walk == walked([source])


@pytest.mark.parametrize(
    "source", ["", "C:", "C", r"C:\a:b", r"C:\a\..\..", "relative", "/x", r"\\h\s", "é:\\x"]
)
def test_what_is_not_a_drive_path(source: str) -> None:
    with pytest.raises(WindowsPathError):
        windows_path(source)
    assert walked([source]) == []


def test_vm_paths_map_back_to_drives() -> None:
    assert from_vm("/run/desktop/mnt/host/c/Users/dev") == r"C:\Users\dev"
    assert from_vm("//host_mnt/d/") == "D:\\"
    assert from_vm("/run/desktop/mnt/host/c/../x") == "X:\\"  # the VM's view of X:
    assert from_vm("/run/desktop/mnt/host/c/../../x") is None
    assert from_vm("/run/desktop/mnt/host/wsl/x") is None
    assert from_vm("/mnt/c/Users") is None


def test_the_policy_takes_windows_folders() -> None:
    p = policy(containers={"allowed_host_paths": ["/srv/data", r"D:\datasets", r"e:\Shared Data"]})
    assert p.containers.allowed_host_paths == ("/srv/data", r"D:\datasets", r"e:\Shared Data")
    for bad in ("D:\\", "D:/datasets", "D:\\datasets\\", r"D:\a\..\b", r"D:\PROGRA~1", r"D:\CON"):
        with pytest.raises(PolicyError, match="allowed_host_paths"):
            policy(containers={"allowed_host_paths": [bad]})
