"""Container settings that give a container the host's root: read as dockerd reads them.

A member of the ``docker`` group runs containers as root. An allowed image started with
``-v /:/host``, ``--privileged`` or ``--pid=host`` is root on the host, and from there it
reaches dockerd's own socket around the shim, or changes the agent itself. So with the
policy's ``containers.host_access: deny`` (the default) the shim refuses the settings
that hand over the host, on every request that can carry them: ``containers/create``,
``services/create|update``, ``containers/{id}/exec``, ``containers/{id}/start|restart``
and ``archive`` (the container as the daemon keeps it: its binds are mounted again),
``volumes/create``, and plugin privileges and settings (docs/shim.md).

Two steps, so the core stays pure: ``from_*`` read a request body (or the daemon's
description of a container or volume) into a :class:`HostAccess`: settings refused
outright, host paths to look at, containers and volumes it takes from. The shim looks
them up and looks at the paths on the machine as the daemon will mount them
(:class:`PathFacts`), and :func:`judge` decides, with whose access a bind may not exceed
(:class:`Requester`). Keys match as Go's ``encoding/json`` matches them
(case-insensitively); a value of the wrong type is refused, as the daemon refuses it.

On a Windows endpoint (Docker Desktop on Windows) the readers take ``windows=True``:
binds are read as the docker CLI on Windows writes them and judged with Windows rules
by :func:`judge_windows` (``agent.core.inspection.windows_binds``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from agent.core.inspection import windows_binds
from agent.core.inspection.windows_binds import WindowsPathFacts, WindowsProtection

__all__ = [
    "DANGEROUS_CAPABILITIES",
    "HostAccess",
    "HostAccessError",
    "HostPath",
    "PathFacts",
    "Protection",
    "Requester",
    "clean_path",
    "from_container_config",
    "from_exec_config",
    "from_plugin_privileges",
    "from_plugin_settings",
    "from_service_spec",
    "from_start_body",
    "from_volume",
    "from_volume_create",
    "judge",
    "judge_windows",
    "windows_lookups",
]


class HostAccessError(ValueError):
    """A body whose settings cannot be read as the daemon reads them (refused, 400)."""


#: Capabilities that give a container the host (kernel modules, raw I/O, mounts, reading
#: any host file by handle, BPF, the MAC policy) — refused with ``host_access: deny``.
#: The default set and debugging ones (``SYS_PTRACE``, ``NET_ADMIN``) stay allowed.
DANGEROUS_CAPABILITIES = frozenset(
    {
        "ALL",
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_DAC_READ_SEARCH",
        "CAP_SYS_BOOT",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_MAC_ADMIN",
        "CAP_MAC_OVERRIDE",
        "CAP_SYSLOG",
    }
)

#: Host paths never bound into a container, nor any directory above them: the daemon's
#: and the agent's sockets and state, the kernel's interfaces, credentials, and what
#: runs as root (a bind of ``/etc`` or ``/var/lib`` is root on the host at its next
#: boot or cron run). Read-only does not help: a read-only bind of a socket still connects.
NO_BIND = (
    "/run",
    "/var/run",
    "/proc",
    "/sys",
    "/dev",
    "/root",
    "/var/lib",
    "/var/log",
    "/var/spool",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/pullgate",
    "/etc/docker",
    "/etc/systemd",
    "/etc/cron.d",
    "/etc/crontab",
    "/etc/security",
    "/etc/pam.d",
    "/opt/pullgate",
    # The boot loader and kernels; before dockerd 25 a read-only bind leaves submounts
    # (/boot/efi) writable.
    "/boot",
    "/efi",
    # macOS, where Docker Desktop shares host paths into its VM.
    "/private/var/run",
    "/private/var/root",
    "/private/var/db",
    "/private/etc/sudoers",
    "/private/etc/sudoers.d",
    "/private/etc/ssh",
    "/Library/LaunchDaemons",
    "/Library/Application Support/Pullgate",
    "/Library/Managed Preferences",
)

#: Host trees a container may read (the time zone, CA certificates, tools) but never
#: write: a writable ``/usr`` or ``/etc`` replaces what root runs.
READ_ONLY = (
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/private/etc",
    "/System",
    "/Library",
)

#: A lone UTF-16 surrogate, which a JSON string may hold but Go reads as U+FFFD.
_SURROGATE = re.compile("[\ud800-\udfff]")

#: Host devices a container may be given (``--device``): FUSE, TUN, KVM, GPUs, sound.
#: Every other device (disks, memory, the console) is the host.
DEVICES = ("/dev/fuse", "/dev/net/tun", "/dev/kvm", "/dev/dri", "/dev/snd")


@dataclass(frozen=True)
class HostPath:
    """A host path a request would put into a container (or make a volume of)."""

    path: str  # absolute, as written
    read_only: bool
    kind: str  # "bind" | "device" | "volume"
    spec: str  # what the user wrote, for the message

    @property
    def lookup(self) -> str:
        """The path as the machine will follow it: dockerd cleans a bind's source
        lexically first (``a/link/..`` is ``a``), then the mount follows the links that
        remain; a device and a volume's ``device`` go to the kernel as written."""
        return clean_path(self.path) if self.kind == "bind" else self.path


@dataclass(frozen=True)
class HostAccess:
    """What a request asks of the host: settings refused as such, and paths to resolve."""

    refused: tuple[str, ...] = ()
    paths: tuple[HostPath, ...] = ()
    #: Containers whose mounts or namespaces this one takes (``--volumes-from``,
    #: ``--pid``/``--ipc container:``): judged as the daemon describes them.
    borrowed: tuple[str, ...] = ()
    #: Named volumes it mounts: one that exists may be a local volume of a host path
    #: made around the agent; judged with its options as the daemon describes them.
    volumes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.refused or self.paths or self.borrowed or self.volumes)

    def __add__(self, other: HostAccess) -> HostAccess:
        return HostAccess(
            self.refused + other.refused,
            self.paths + other.paths,
            self.borrowed + other.borrowed,
            self.volumes + other.volumes,
        )

    def of(self, whose: str) -> HostAccess:
        """The same, each line saying whose it is (a borrowed container's)."""
        return HostAccess(
            tuple(f"{whose}: {r}" for r in self.refused),
            tuple(replace(p, spec=f"{whose}: {p.spec}") for p in self.paths),
            self.borrowed,
            self.volumes,
        )


@dataclass(frozen=True)
class Protection:
    """Where the machine keeps what a container must not reach, besides :data:`NO_BIND`.

    ``no_bind``: the daemon's socket, its data root, the agent's state and audit
    directories (resolved); ``exact_allowed``: paths a bind may name exactly — the
    agent's own socket, which applies the policy to whatever connects (Testcontainers
    and the like mount it); ``allowed``: the organisation's ``allowed_host_paths``.
    """

    no_bind: tuple[str, ...] = ()
    exact_allowed: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    devices: tuple[str, ...] = DEVICES


# --- reading bodies as dockerd reads them ----------------------------------------------


def _field(obj: object, name: str, where: str) -> object:
    """A JSON object's field as Go finds it: case-insensitive; two spellings refused."""
    if not isinstance(obj, dict):
        return None
    matches = [key for key in obj if key.casefold() == name.casefold()]
    if len(matches) > 1:
        raise HostAccessError(f"{where} has several keys that mean {name!r}")
    return obj[matches[0]] if matches else None


def _bool(obj: object, name: str, where: str) -> bool:
    value = _field(obj, name, where)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise HostAccessError(f"{where}.{name} must be true or false")
    return value


def _str(obj: object, name: str, where: str) -> str:
    value = _field(obj, name, where)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HostAccessError(f"{where}.{name} must be a string")
    return value


def _strings(obj: object, name: str, where: str) -> list[str]:
    value = _field(obj, name, where)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HostAccessError(f"{where}.{name} must be a list of strings")
    return list(value)


def _objects(obj: object, name: str, where: str) -> list[object]:
    value = _field(obj, name, where)
    if value is None:
        return []
    if not isinstance(value, list):
        raise HostAccessError(f"{where}.{name} must be a list")
    return list(value)


def _string_map(obj: object, name: str, where: str) -> dict[str, str]:
    value = _field(obj, name, where)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise HostAccessError(f"{where}.{name} must map names to strings")
    return dict(value)


def normalize_capability(cap: str) -> str:
    """moby's ``NormalizeLegacyCapabilities``: ``sys_admin``, ``CAP_SYS_ADMIN`` alike."""
    lowered = cap.lower()
    if lowered == "all":
        return "ALL"
    return "CAP_" + lowered.removeprefix("cap_").upper()


def _capabilities(caps: Iterable[str], flag: str) -> list[str]:
    return [f"{flag} {cap}" for cap in caps if normalize_capability(cap) in DANGEROUS_CAPABILITIES]


def _security_opts(opts: Iterable[str]) -> list[str]:
    """``--security-opt``, split as moby's ``parseSecurityOpt`` splits it (``=`` first,
    then the legacy ``:``). Only ``no-new-privileges`` and SELinux levels, users and
    roles keep the container's confinement; everything else changes it."""
    out = []
    for opt in opts:
        sep = "=" if "=" in opt else ":"
        key, _, value = opt.partition(sep)
        if key == "no-new-privileges":
            continue
        if key == "label" and value.split(":", 1)[0] in ("level", "user", "role"):
            continue
        out.append(f"--security-opt {opt}")
    return out


def _namespace(mode: str, flag: str) -> list[str]:
    return [f"{flag}=host"] if mode.lower() == "host" else []


def _bind_spec(raw: str) -> HostPath | str | None:
    """One ``-v`` bind as moby's Linux parser reads it: ``src:dst[:mode]`` split on
    ``:``; a source that is not absolute names a volume (returned as its name)."""
    parts = raw.split(":")
    if len(parts) < 2 or len(parts) > 3:
        return None  # an anonymous volume, or a spec the daemon refuses
    source = parts[0]
    if not source.startswith("/"):
        return source or None  # a named volume
    modes = parts[2].split(",") if len(parts) == 3 else []
    return HostPath(source, "ro" in modes and "rw" not in modes, "bind", f"-v {raw}")


def _windows_binds(raw: str, described: bool) -> tuple[list[str], list[HostPath], list[str]]:
    """One ``-v`` string on a Windows endpoint, as the CLI on Windows splits it: what is
    refused outright, the host path, the volumes it may name."""
    try:
        bind = windows_binds.read_bind(raw)
    except windows_binds.BindSpecError as e:
        return (
            [f"-v {raw}: {e} (no docker CLI sends that; Docker Desktop's reading is unknown)"],
            [],
            [],
        )
    volumes = list(dict.fromkeys(v for v in (bind.volume, bind.linux_volume) if v))
    if bind.source is None:
        return [], [], volumes
    source = _windows_source(bind.source, described)
    return [], [HostPath(source, bind.read_only, "bind", f"-v {raw}")], volumes


def _windows_source(path: str, described: bool) -> str:
    """A host path on a Windows endpoint: the daemon describes a bind of a drive path by
    Docker Desktop's VM path of it (``/run/desktop/mnt/host/c/...``), which is that
    drive path; a request's path is judged as written."""
    return (windows_binds.from_vm(path) or path) if described else path


def _mounts(
    mounts: Iterable[object],
    where: str,
    flag: str,
    *,
    windows: bool = False,
    described: bool = False,
) -> tuple[list[str], list[HostPath]]:
    refused: list[str] = []
    paths: list[HostPath] = []
    for i, mount in enumerate(mounts):
        at = f"{where}[{i}]"
        if not isinstance(mount, dict):
            raise HostAccessError(f"{at} must be an object")
        kind = _str(mount, "Type", at).lower()
        source = _str(mount, "Source", at)
        read_only = _bool(mount, "ReadOnly", at)
        spec = f"{flag} type={kind},source={source}"
        if kind == "bind":
            found_at = _windows_source(source, described) if windows else source
            paths.append(HostPath(found_at, read_only, "bind", spec))
        elif kind == "volume":
            options = _field(mount, "VolumeOptions", at)
            config = _field(options, "DriverConfig", f"{at}.VolumeOptions")
            driver = _str(config, "Name", f"{at}.VolumeOptions.DriverConfig")
            opts = _string_map(config, "Options", f"{at}.VolumeOptions.DriverConfig")
            more, found = _local_volume(driver, opts, spec, windows=windows, described=described)
            refused += more
            paths += found
        elif kind in ("npipe", "cluster"):
            refused.append(spec)
        elif kind not in ("tmpfs", "image", ""):
            refused.append(spec)  # a type this reading does not know: refused, not guessed
    return refused, paths


#: File systems whose ``device`` names no host path: memory, and network shares.
_NOT_HOST_PATHS = frozenset(
    {"tmpfs", "ramfs", "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs"}
)
#: File systems that show the host's kernel (a fresh procfs shows every host process
#: and a writable ``core_pattern``) or stack host directories (``lowerdir=/etc``).
_HOST_FILESYSTEMS = frozenset(
    {
        "proc", "sysfs", "cgroup", "cgroup2", "devtmpfs", "devpts", "debugfs", "tracefs",
        "securityfs", "bpf", "binfmt_misc", "configfs", "fusectl", "pstore", "efivarfs",
        "hugetlbfs", "mqueue", "overlay", "aufs", "autofs", "rpc_pipefs", "nsfs",
    }
)  # fmt: skip


#: The host's shares into Docker Desktop's VM on Windows: WSL 2's 9p (drvfs's virtio
#: tags ``drvfs`` and ``drvfsa``, this one served elevated) and virtiofs. ``9p`` is a
#: network share elsewhere (``trans=tcp``), but there it is a Windows drive.
_VM_SHARES = frozenset({"9p", "virtiofs"})


def _last_mode(flags: Iterable[str]) -> bool:
    """Mount options apply in order: the last of ``ro``/``rw`` wins (``ro,rw`` writes)."""
    read_only = False
    for flag in flags:
        if flag in ("ro", "rw"):
            read_only = flag == "ro"
    return read_only


def _local_volume(
    driver: str,
    opts: Mapping[str, str],
    spec: str,
    *,
    windows: bool = False,
    described: bool = False,
) -> tuple[list[str], list[HostPath]]:
    """The ``local`` driver's ``mount(device, target, type, o)``, as mount(2) reads it:
    with ``o=bind`` (or a disk's file system) ``device`` is a host path or a host disk,
    resolved from dockerd's working directory when relative; a kernel file system or an
    overlay shows the host itself. Only memory and network shares name no host path.
    On a Windows endpoint every ``device`` is judged as a Windows path (a relative one
    is refused there too)."""
    if driver not in ("", "local"):
        return [], []
    option = {k.lower(): v for k, v in opts.items()}
    kind = option.get("type", "").lower()
    device = option.get("device", "")
    flags = [f.strip() for f in option.get("o", "").split(",")]
    if kind in _HOST_FILESYSTEMS:
        return [f"{spec}: a local volume of type {kind}"], []
    if windows and kind in _VM_SHARES:
        return [
            f"{spec}: a local volume of type {kind} (Docker Desktop's VM reaches Windows' "
            "drives through such shares: a whole drive, not a network share)"
        ], []
    bind = any(f in ("bind", "rbind") for f in flags)
    if not bind and (kind in _NOT_HOST_PATHS or not device):
        return [], []
    if windows:
        if described:  # mount(2) takes it as written: '..' after a junction is not lexical
            device = windows_binds.from_vm(device, lexical=False) or device
    elif not device.startswith("/"):
        return [f"{spec}: the relative host path {device!r}"], []
    return [], [HostPath(device, _last_mode(flags), "volume", spec)]


def _devices(devices: Iterable[object], where: str) -> list[HostPath]:
    out = []
    for i, device in enumerate(devices):
        at = f"{where}[{i}]"
        if not isinstance(device, dict):
            raise HostAccessError(f"{at} must be an object")
        path = _str(device, "PathOnHost", at)
        out.append(HostPath(path, False, "device", f"--device {path}"))
    return out


def from_container_config(
    config: object, *, described: bool = False, windows: bool = False
) -> HostAccess:
    """A ``containers/create`` body: its ``HostConfig``, and the same fields at the top
    level, which dockerd's ``ContainerConfigWrapper`` still reads (a deprecated embedded
    ``HostConfig``) when the body has no ``HostConfig``; both are judged.

    ``described``: ``config`` is the daemon's description of a container (``GET
    /containers/{id}/json``): its ``HostConfig``, and the bind mounts it has (``Mounts``,
    with those it took from other containers); ``MaskedPaths`` and ``ReadonlyPaths``
    hold the daemon's defaults there, so only an empty list (nothing masked) is refused.
    ``windows``: a Windows endpoint's (see the module's docstring).
    """
    if config is not None and not isinstance(config, dict):
        raise HostAccessError("the container config must be an object")
    host = _field(config, "HostConfig", "the container config")
    if host is not None and not isinstance(host, dict):
        raise HostAccessError("HostConfig must be an object")
    access = (
        _host_config(host, "HostConfig", described, windows) if host is not None else HostAccess()
    )
    if described:
        return access + _mount_points(config, windows)
    if isinstance(config, dict):
        access += _host_config(config, "the container config", described, windows)
    return access


def _mount_points(described: object, windows: bool = False) -> HostAccess:
    """A described container's ``Mounts`` (``MountPoint``s): its bind mounts as given,
    and the names of its volumes (a volume's ``Source`` is its directory under the
    daemon's data root; what it mounts is in the volume's options)."""
    paths = []
    volumes = []
    for i, point in enumerate(_objects(described, "Mounts", "the container")):
        at = f"the container's Mounts[{i}]"
        kind = _str(point, "Type", at).lower()
        if kind == "volume" and _str(point, "Name", at):
            volumes.append(_str(point, "Name", at))
        if kind != "bind":
            continue
        source = _str(point, "Source", at)
        writable = _field(point, "RW", at)
        found_at = _windows_source(source, True) if windows else source
        paths.append(HostPath(found_at, writable is False, "bind", f"the bind of {source}"))
    return HostAccess(paths=tuple(paths), volumes=tuple(volumes))


def _borrowed(host: object, where: str) -> list[str]:
    names = [v.split(":", 1)[0] for v in _strings(host, "VolumesFrom", where)]
    for key in ("PidMode", "IpcMode"):
        mode = _str(host, key, where)
        if mode.lower().startswith("container:"):
            names.append(mode.split(":", 1)[1])
    return [n for n in names if n]


def _host_config(host: object, where: str, described: bool, windows: bool = False) -> HostAccess:
    refused: list[str] = []
    if _bool(host, "Privileged", where):
        refused.append("--privileged")
    refused += _namespace(_str(host, "PidMode", where), "--pid")
    refused += _namespace(_str(host, "IpcMode", where), "--ipc")
    refused += _namespace(_str(host, "UsernsMode", where), "--userns")
    refused += _capabilities(_strings(host, "CapAdd", where), "--cap-add")
    refused += _capabilities(_strings(host, "Capabilities", where), "Capabilities")
    refused += _security_opts(_strings(host, "SecurityOpt", where))
    if _strings(host, "DeviceCgroupRules", where):
        refused.append("--device-cgroup-rule")
    for name in ("MaskedPaths", "ReadonlyPaths"):
        # An explicit list replaces the daemon's default masks of /proc and /sys.
        if _field(host, name, where) is not None:
            masked = _strings(host, name, where)
            if not described or not masked:
                refused.append(f"HostConfig.{name}")
    sysctls = _string_map(host, "Sysctls", where)
    network = _str(host, "NetworkMode", where).lower()
    if sysctls and network == "host":
        refused.append("--sysctl with --network=host")  # the host's own kernel settings
    paths: list[HostPath] = []
    volumes: list[str] = []
    for raw in _strings(host, "Binds", where):
        if windows:
            more, found, named = _windows_binds(raw, described)
            refused += more
            paths += found
            volumes += named
            continue
        bind = _bind_spec(raw)
        if isinstance(bind, HostPath):
            paths.append(bind)
        elif bind is not None:
            volumes.append(bind)
    mounts = _objects(host, "Mounts", where)
    more, found = _mounts(
        mounts, f"{where}.Mounts", "--mount", windows=windows, described=described
    )
    refused += more
    paths += found
    for i, mount in enumerate(mounts):
        at = f"{where}.Mounts[{i}]"
        if _str(mount, "Type", at).lower() == "volume" and _str(mount, "Source", at):
            volumes.append(_str(mount, "Source", at))
    paths += _devices(_objects(host, "Devices", where), f"{where}.Devices")
    borrowed = () if described else tuple(_borrowed(host, where))
    return HostAccess(tuple(refused), tuple(paths), borrowed, tuple(volumes))


def from_service_spec(spec: object, *, windows: bool = False) -> HostAccess:
    """A ``services/create|update`` body: the task's ``ContainerSpec``."""
    task = _field(spec, "TaskTemplate", "the service spec")
    container = _field(task, "ContainerSpec", "TaskTemplate")
    if container is None:
        return HostAccess()
    where = "ContainerSpec"
    refused = _capabilities(_strings(container, "CapabilityAdd", where), "--cap-add")
    privileges = _field(container, "Privileges", where)
    at = f"{where}.Privileges"
    seccomp = _str(_field(privileges, "Seccomp", at), "Mode", f"{at}.Seccomp").lower()
    if seccomp not in ("", "default"):
        refused.append(f"seccomp {seccomp}")
    apparmor = _str(_field(privileges, "AppArmor", at), "Mode", f"{at}.AppArmor").lower()
    if apparmor not in ("", "default"):
        refused.append(f"apparmor {apparmor}")
    selinux = _field(privileges, "SELinuxContext", at)
    if _bool(selinux, "Disable", f"{at}.SELinuxContext") or _str(
        selinux, "Type", f"{at}.SELinuxContext"
    ):
        refused.append("an SELinux type or label=disable")
    mounts = _objects(container, "Mounts", where)
    more, paths = _mounts(mounts, f"{where}.Mounts", "--mount", windows=windows)
    return HostAccess(tuple(refused + more), tuple(paths))


def from_exec_config(config: object) -> HostAccess:
    """``containers/{id}/exec``: a privileged exec has every capability and device."""
    if _bool(config, "Privileged", "the exec config"):
        return HostAccess(("docker exec --privileged",))
    return HostAccess()


def from_volume(name: str, described: object, *, windows: bool = False) -> HostAccess:
    """An existing volume as the daemon describes it (``GET /volumes/{name}``): a
    ``local`` one with ``device`` options mounts what they name."""
    driver = _str(described, "Driver", f"volume {name}")
    opts = _string_map(described, "Options", f"volume {name}")
    refused, paths = _local_volume(driver, opts, f"volume {name}", windows=windows, described=True)
    return HostAccess(tuple(refused), tuple(paths))


def from_volume_create(body: object, *, windows: bool = False) -> HostAccess:
    """``volumes/create``: a ``local`` volume with ``device`` is a bind or a host disk."""
    driver = _str(body, "Driver", "the volume config")
    opts = _string_map(body, "DriverOpts", "the volume config")
    name = _str(body, "Name", "the volume config")
    spec = f"docker volume create {name}"
    refused, paths = _local_volume(driver, opts, spec, windows=windows)
    return HostAccess(tuple(refused), tuple(paths))


def from_start_body(body: object) -> HostAccess:
    """``containers/{id}/start``: API versions before 1.24 took a ``HostConfig`` here
    (a daemon started with a lower minimum version still does); any is refused."""
    if body is None or body == {}:
        return HostAccess()
    return HostAccess(("a HostConfig on container start (API before 1.24)",))


def from_plugin_settings(body: object) -> HostAccess:
    """``plugins/{name}/set``: ``NAME.source=PATH`` re-points a plugin's mount and
    ``NAME.path=PATH`` its device; the plugin runs as root with them. Environment
    variables and arguments pass."""
    if not isinstance(body, list) or not all(isinstance(v, str) for v in body):
        raise HostAccessError("the plugin settings must be a list of strings")
    refused = []
    for setting in body:
        key = setting.split("=", 1)[0]
        if "." in key and key.rsplit(".", 1)[1] in ("source", "path"):
            refused.append(f"docker plugin set {setting}")
    return HostAccess(tuple(refused))


def from_plugin_privileges(body: object) -> HostAccess:
    """``plugins/pull|upgrade``: the privileges the client accepts for the plugin. A
    plugin runs as root with them; any but network access is the host."""
    if body is None:
        return HostAccess()
    if not isinstance(body, list):
        raise HostAccessError("the plugin privileges must be a list")
    refused = []
    for i, item in enumerate(body):
        name = _str(item, "Name", f"privileges[{i}]")
        values = _strings(item, "Value", f"privileges[{i}]")
        if name != "network":
            # Even an empty value: a settable mount's source is set later (plugin set).
            refused.append(f"plugin privilege {name}: {', '.join(values) or '(settable)'}")
    return HostAccess(tuple(refused))


# --- deciding ----------------------------------------------------------------------------


def clean_path(path: str) -> str:
    """``filepath.Clean``: ``.``/``..`` resolved and repeated slashes folded (POSIX keeps
    a leading ``//``; Go does not, and neither does the kernel's lookup)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("/") else cleaned


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _above(path: str, root: str) -> bool:
    """``path`` is a directory above ``root`` (``/`` is above everything)."""
    return path != root and _under(root, path)


def _path_problem(given: HostPath, resolved: str, protection: Protection) -> str | None:
    if resolved in protection.exact_allowed and given.kind == "bind":
        return None
    if any(_under(resolved, root) for root in protection.allowed):
        return None
    where = given.path if resolved == given.path else f"{given.path} (that is {resolved})"
    if given.kind == "device":
        if resolved != clean_path(given.path):
            # The daemon follows the link; a link a user can change is not judged.
            return f"{given.spec}: the device path goes through a symbolic link"
        if any(_under(resolved, dev) for dev in protection.devices):
            return None
        return f"{given.spec}: host device {where}"
    no_bind = (*NO_BIND, *protection.no_bind)
    if resolved == "/":
        return f"{given.spec}: {where} is the host's whole file system"
    for root in no_bind:
        if _under(resolved, root):
            return f"{given.spec}: {where} is the host's {root}"
        if _above(resolved, root):
            return f"{given.spec}: {where} holds the host's {root}"
    if not given.read_only:
        for root in READ_ONLY:
            if _under(resolved, root):
                return f"{given.spec}: {where} is writable (the host's {root}; bind it :ro)"
            if _above(resolved, root):
                return f"{given.spec}: {where} holds the host's {root} writable"
    return None


@dataclass(frozen=True)
class PathFacts:
    """A host path as the daemon's side of the machine resolves it now.

    ``resolved``: links followed (a part that does not exist is kept as written);
    ``chain``: ``(mode, uid, gid)`` of ``/`` and each existing directory below it on
    the resolved path, then of the path itself when it exists (``exists``). Empty when
    nothing could be looked at: then no one's access is judged.
    """

    resolved: str
    chain: tuple[tuple[int, int, int], ...] = ()
    exists: bool = True


@dataclass(frozen=True)
class Requester:
    """Whom the request is for: a bind gives a container's root no more of the host
    than this user has (``uid``, all ``gids``). ``contained``: the client runs inside a
    container (another PID namespace) — its uid 0 is not the host's administrator."""

    uid: int
    gids: frozenset[int]
    contained: bool = False


#: The uid and gid whose access a container's root is given (``nobody``).
NOBODY = 65534
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFSOCK = 0o140000


def _may(mode: int, uid: int, gid: int, who: Requester, bits: int) -> bool:
    """POSIX permission bits (``bits`` of r=4, w=2, x=1) for ``who``; ACLs not read."""
    if who.uid == uid:
        return mode >> 6 & bits == bits
    if gid in who.gids:
        return mode >> 3 & bits == bits
    return mode & bits == bits


def _access_problem(given: HostPath, facts: PathFacts, who: Requester) -> str | None:
    """A bind (or a local volume's path) must not give the container's root more of the
    host than its requester has. What a directory holds cannot be listed up front
    (``/tmp`` holds root's 0700 ``tmux-0``; ``/home`` other users' homes), so:

    * the directories above it must be searchable by the requester;
    * the path must be the requester's own (their uid owns it), or be read-only inside
      the system's read-only trees (``READ_ONLY``: ``/usr/share``, ``/etc/ssl``) and
      readable by them; a socket (connect needs write) only if theirs;
    * a path that does not exist yet is made by dockerd, as root: only inside a
      directory of the requester's own, which they could have made it in.

    A client inside a container (its uid is whatever the container was started with)
    counts as nobody, who owns nothing. Root on the host is not judged here.
    """
    if not facts.chain or (who.uid == 0 and not who.contained):
        return None
    if who.contained:
        who = Requester(NOBODY, frozenset({NOBODY}), contained=True)
    above = facts.chain[:-1] if facts.exists else facts.chain
    for mode, uid, gid in above:
        if not _may(mode, uid, gid, who, 1):
            return f"{given.spec}: {facts.resolved} is beyond what you can reach on this machine"
    if not facts.exists:
        mode, uid, gid = above[-1] if above else (0, 0, 0)
        if uid != who.uid or not _may(mode, uid, gid, who, 3):
            return (
                f"{given.spec}: {facts.resolved} does not exist, and Docker would make it "
                "as root where it is not yours; make it yourself first (mkdir -p)"
            )
        return None
    mode, uid, gid = facts.chain[-1]
    kind = mode & _S_IFMT
    wanted = 5 if kind == _S_IFDIR else 4
    if not given.read_only or kind == _S_IFSOCK:
        wanted |= 2
    if uid != who.uid:
        system = any(_under(facts.resolved, root) for root in READ_ONLY)
        if not (given.read_only and system and kind != _S_IFSOCK):
            return f"{given.spec}: {facts.resolved} is not yours (owner uid {uid})"
    if not _may(mode, uid, gid, who, wanted):
        how = "read" if wanted & 2 == 0 else "write"
        return f"{given.spec}: you cannot {how} {facts.resolved} yourself"
    return None


def judge(
    access: HostAccess,
    resolved: Mapping[str, PathFacts],
    protection: Protection,
    requester: Requester | None = None,
) -> list[str]:
    """What in ``access`` hands over the host: one line each, empty when nothing does.

    ``resolved``: each path's facts as the machine resolves it now (links followed); a
    path missing from it could not be looked at and is judged as written.
    ``requester``: whose access a bind may not exceed (None: not judged).
    """
    problems = list(access.refused)
    for given in access.paths:
        if not given.path.startswith("/"):
            problems.append(f"{given.spec}: a host path must be absolute")
            continue
        if "\0" in given.path:
            problems.append(f"{given.spec}: a NUL in a host path")
            continue
        if _SURROGATE.search(given.path):
            # JSON's "\ud800" is a lone surrogate here, U+FFFD to the daemon (Go), and
            # a byte 0x80-0xff to the agent's lookups (surrogateescape): another name.
            problems.append(f"{given.spec}: a lone UTF-16 surrogate in a host path")
            continue
        facts = resolved.get(given.lookup) or PathFacts(given.lookup)
        path = clean_path(facts.resolved)
        problem = _path_problem(given, path, protection)
        judged = requester is not None and given.kind != "device"
        if problem is None and judged and path not in protection.exact_allowed:
            assert requester is not None
            problem = _access_problem(given, facts, requester)
        if problem is not None:
            problems.append(problem)
    return problems


def windows_lookups(access: HostAccess) -> list[str]:
    """What the machine must show about ``access``'s paths on a Windows endpoint: every
    folder each bind or local volume's drive path passes through (``walked``)."""
    return windows_binds.walked(p.path for p in access.paths if p.kind != "device")


def judge_windows(
    access: HostAccess,
    facts: Mapping[str, WindowsPathFacts],
    protection: WindowsProtection,
    devices: Protection,
) -> list[str]:
    """:func:`judge` on a Windows endpoint (Docker Desktop): binds and local volumes'
    paths with Windows rules (``windows_binds.path_problem``: a drive path in the
    requester's profile or an allowed folder, through no junction or link); devices,
    which name the VM's (or a Windows container's device classes), with the fixed list
    as written (``devices``); every other setting as on Linux.

    ``facts``: each walked folder as the machine shows it (:func:`windows_lookups`).
    """
    problems = list(access.refused)
    for given in access.paths:
        if given.kind == "device":
            problems += judge(HostAccess(paths=(given,)), {}, devices)
            continue
        problem = windows_binds.path_problem(given.path, given.spec, facts, protection)
        if problem is not None:
            problems.append(problem)
    return problems
