"""Bind sources on a Windows endpoint (Docker Desktop), read and judged with Windows rules.

On Windows the docker CLI sends a bind's source as the user wrote it: ``-v`` strings
go into ``HostConfig.Binds`` unchanged (split by the CLI with a drive letter's colon
kept, and only a source starting with ``.`` made absolute with Windows'
``filepath.Abs``), ``--mount`` sources into ``Mounts`` the same way. Docker Desktop's
API proxy, in front of the Linux daemon in its VM, then maps a drive path to the VM's
view of that drive (``C:\\Users\\me`` is ``/run/desktop/mnt/host/c/Users/me`` with the
WSL 2 backend, ``/host_mnt/c/Users/me`` with Hyper-V), which is what the daemon keeps
and describes. Anything else the VM reads as its own: ``/var/run/docker.sock`` is
mapped to the daemon's socket, ``/`` is the VM, ``/run/desktop/mnt/host`` every drive.
With Windows containers the daemon on the same pipe is a Windows service and takes
the path (or a named pipe, ``\\\\.\\pipe\\docker_engine`` itself) as it is.

So a bind passes only as an absolute drive path that leaves no doubt where it leads,
inside the requester's profile (or a path the organisation allows), and not in the
places there that hold Docker's or Pullgate's own: :func:`path_problem`. Whether a
part of it is a junction or link (a junction in the profile to ``C:\\`` would pass by
name) is a fact of the machine (``agent.platform.windows_host_paths``), looked up for
every folder the walk passes through (:func:`walked`).

Pure: strings in, strings out; docs/shim.md has the table.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "PROFILE_NO_BIND",
    "BindSpecError",
    "Place",
    "WindowsBind",
    "WindowsPath",
    "WindowsPathError",
    "WindowsPathFacts",
    "WindowsProtection",
    "allowed_entry_problem",
    "from_vm",
    "is_drive_path",
    "path_problem",
    "read_bind",
    "system_places",
    "walked",
    "windows_path",
]


class WindowsPathError(ValueError):
    """A bind source that is not a drive path this reading can vouch for; the message
    says what it is instead."""


class BindSpecError(ValueError):
    """A ``-v`` string the docker CLI itself would not send (empty section, too many
    colons): what Docker Desktop would make of it is not known, so it is refused."""


#: Places in a profile no container may bind, nor a folder that holds them: what the
#: docker CLI and Docker Desktop keep there (a context leading around Pullgate, the
#: VM's disks and settings), and WSL's own settings (the VM's kernel and command line).
PROFILE_NO_BIND: tuple[tuple[str, str], ...] = (
    (".docker", "the docker CLI's contexts, settings and credentials"),
    (".wslconfig", "WSL 2's settings (the kernel Docker Desktop's VM runs)"),
    ("AppData\\Local\\Docker", "Docker Desktop's VM, its disks and its data"),
    ("AppData\\Roaming\\Docker", "Docker Desktop's settings"),
    ("AppData\\Roaming\\Docker Desktop", "Docker Desktop's settings"),
)

_SEPARATORS = ("\\", "/")  # a tuple: "" is in every string, in no tuple of these
_DRIVE = re.compile(r"[A-Za-z]:")
# Names Windows opens as devices whatever the folder or extension (``nul.txt``).
_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{kind}{n}" for kind in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]}
)
_NOT_IN_NAMES = frozenset('<>"|?*')
# A lone UTF-16 surrogate: JSON's "\ud800" is one in Python, but Go's encoding/json (the
# daemon, Desktop's proxy) reads U+FFFD there, so the judge would look at another name.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_WHY = (
    "has a lone UTF-16 surrogate (\\ud800 to \\udfff), which Docker reads as U+FFFD: "
    "another name than the one looked at"
)
# IO_REPARSE_TAG_CLOUD and _CLOUD_1 to _F (ntifs.h): 0x9000x01A.
_CLOUD_TAG, _CLOUD_TAG_MASK = 0x9000001A, 0xFFFF0FFF
# Docker Desktop's view of a drive in its VM: WSL 2 backend, then Hyper-V backend.
_VM_DRIVE = re.compile(r"/(?:run/desktop/mnt/host|host_mnt)/([a-z])(/.*)?")


def _fold(text: str) -> str:
    """Names as NTFS compares them: each character's simple upper case, one for one
    (never ``ß`` to ``SS``, which would make two names of different length equal)."""
    return "".join(u if len(u := c.upper()) == 1 else c for c in text)


@dataclass(frozen=True)
class WindowsPath:
    """An absolute drive path, ``.`` and ``..`` resolved as Windows resolves them
    (lexically). ``walked``: every folder and file the lexical walk passes through,
    those that ``..`` leaves again too: where they are not junctions or links, the
    lexical answer is the one the file system gives."""

    drive: str
    parts: tuple[str, ...]
    walked: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.drive + ":\\" + "\\".join(self.parts)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.drive.upper(), *map(_fold, self.parts))

    def within(self, root: WindowsPath) -> bool:
        """This path is ``root`` or below it."""
        return self.key[: len(root.key)] == root.key

    def holds(self, other: WindowsPath) -> bool:
        """``other`` is below this path (a bind of this path shows it)."""
        return other.within(self) and other.key != self.key


def _prefix(drive: str, parts: list[str]) -> str:
    return drive + ":\\" + "\\".join(parts)


def _check_name(name: str) -> None:
    if ":" in name:
        raise WindowsPathError("names an alternate data stream (a ':' after the drive)")
    if any(c in _NOT_IN_NAMES or ord(c) < 32 for c in name):
        raise WindowsPathError("has a character Windows does not allow in a name")
    if name.endswith((".", " ")):
        raise WindowsPathError(
            "has a name ending in a dot or a space, which Windows drops (so it names "
            "another folder than it shows)"
        )
    if _fold(_go_lower(name)) != _fold(name):
        raise WindowsPathError(
            "has a letter whose lower case is another name (the Kelvin sign, 'İ'): the "
            "Windows daemon lowercases a -v string, so it would bind another folder"
        )
    if _is_short_name(name):
        raise WindowsPathError("has a short (8.3) name with '~'; write the folder's long name")
    if _fold(name.split(".", 1)[0].rstrip(" ")) in _DEVICES:
        raise WindowsPathError("names a Windows device (CON, NUL, COM1 and the like)")


def _go_lower(text: str) -> str:
    """Go's ``strings.ToLower``, one character for one (``İ`` is ``i``), as moby's
    Windows parser lowercases a whole ``-v`` string before taking its source."""
    return "".join(
        low if len(low := c.lower()) == 1 else ("i" if c == "\u0130" else c) for c in text
    )


def _is_short_name(name: str) -> bool:
    """A name Windows may have made as a folder's short (8.3) alias: at most eight
    characters, ``~`` and a digit among them, then at most one dot and three more
    (``PROGRA~1``, ``DOCKER~1.CFG``). Any other ``~`` (``my~project``) is a plain name."""
    base, dot, extension = name.partition(".")
    return (
        len(base) <= 8
        and len(extension) <= 3
        and "." not in extension
        and bool(dot or not extension)
        and re.search(r"~[0-9]", base) is not None
    )


def windows_path(source: str) -> WindowsPath:
    """``source`` as an absolute drive path (``C:\\...`` or ``C:/...``, repeated
    separators folded as Windows folds them), or ``WindowsPathError`` saying what it is."""
    if "\0" in source:
        raise WindowsPathError("has a NUL character")
    if _SURROGATE.search(source):
        raise WindowsPathError(_SURROGATE_WHY)
    if source[:1] in _SEPARATORS and source[1:2] in _SEPARATORS:
        if source[2:3] in (".", "?") and source[3:4] in _SEPARATORS:
            if source[4:8].lower() == "pipe" and source[8:9] in _SEPARATORS:
                raise WindowsPathError(
                    "is a named pipe (\\\\.\\pipe\\docker_engine is the Docker daemon itself)"
                )
            raise WindowsPathError("is a Windows device path (\\\\.\\ or \\\\?\\)")
        if source.startswith("//"):
            raise _vm_path()  # Desktop reads //var/run/docker.sock as /var/run/docker.sock
        raise WindowsPathError("is a network (UNC) path")
    if source.startswith("/"):
        raise _vm_path()
    if source.startswith("\\"):
        raise WindowsPathError("has no drive letter; write the full path (C:\\...)")
    if not _DRIVE.match(source):
        raise WindowsPathError("is a relative path; write the full path (C:\\...)")
    if source[2:3] not in _SEPARATORS:
        raise WindowsPathError(
            "is relative to the drive's current folder; write the full path (C:\\...)"
        )
    drive = source[0].upper()
    parts: list[str] = []
    seen: list[str] = []
    for name in re.split(r"[\\/]+", source[3:]):
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                raise WindowsPathError("goes above the drive's root ('..')")
            parts.pop()
            continue
        _check_name(name)
        parts.append(name)
        seen.append(_prefix(drive, parts))
    return WindowsPath(drive, tuple(parts), tuple(dict.fromkeys(seen)))


def _vm_path() -> WindowsPathError:
    return WindowsPathError(
        "is a path in Docker Desktop's Linux VM, not on Windows (the VM holds the Docker "
        "daemon's socket, its data and every drive); write a Windows path (C:\\...)"
    )


def _path_or_none(source: str) -> WindowsPath | None:
    try:
        return windows_path(source)
    except WindowsPathError:
        return None


def is_drive_path(text: str) -> bool:
    """Written as a Windows drive path (``X:\\`` or ``X:/``), well formed or not."""
    return bool(_DRIVE.match(text)) and text[2:3] in _SEPARATORS


def allowed_entry_problem(entry: str) -> str | None:
    """Why ``entry`` cannot be a Windows ``containers.allowed_host_paths`` entry: it
    must be a clean drive path (backslashes, no ``.``, ``..``, short names or trailing
    separator) below a drive's root."""
    try:
        path = windows_path(entry)
    except WindowsPathError as e:
        return f"{entry!r} {e}"
    if not path.parts:
        return f"{entry!r} would allow a whole drive; use host_access: allow instead"
    if str(path) != entry[0].upper() + entry[1:]:
        return f"{entry!r} must be written as a clean Windows path: {str(path)!r}"
    return None


def from_vm(path: str, *, lexical: bool = True) -> str | None:
    """The drive path Docker Desktop's VM path ``path`` shows (its view of a drive, as
    the daemon keeps and describes a bind of ``C:\\...``); None for any other path of
    the VM. ``lexical``: cleaned first as the daemon cleans a bind's source; otherwise
    (a local volume's ``device``, which mount(2) follows as written: a junction before
    a ``..`` is entered first) only ``.`` and repeated slashes go, each ``..`` after the
    drive is kept for the judgement to walk, and one before it is the VM's."""
    if "\\" in path:  # a backslash is part of a name in the VM
        return None
    if lexical:
        match = _VM_DRIVE.fullmatch(posixpath.normpath("/" + path.lstrip("/")))
    elif path.startswith("/"):
        names = [name for name in path.split("/") if name not in ("", ".")]
        match = _VM_DRIVE.fullmatch("/" + "/".join(names))
    else:
        return None  # relative: from the daemon's working directory in the VM
    if match is None:
        return None
    rest = (match.group(2) or "/").replace("/", "\\")
    return match.group(1).upper() + ":" + rest


# --- reading -v as the Windows CLI splits it -------------------------------------------


@dataclass(frozen=True)
class WindowsBind:
    """One ``-v`` string as the docker CLI on Windows splits it.

    ``source``: a host path (any path-like source, to be judged); ``volume``: a named
    volume; ``linux_volume``: the volume the Linux daemon would mount if the string
    reached it as written (``C:/app`` is volume ``C`` there): looked up too."""

    source: str | None = None
    volume: str | None = None
    linux_volume: str | None = None
    read_only: bool = False


def _fields(raw: str) -> list[str]:
    """The CLI's split (``volumespec.Parse``): on ``:``, but a colon right after a
    single letter at a field's start is a drive's and stays in the field."""
    fields: list[str] = []
    buffer = ""
    for char in raw:
        if char == ":" and len(buffer) == 1 and buffer.isalpha():
            buffer += char
        elif char == ":":
            if not buffer:
                raise BindSpecError("an empty section between colons")
            fields.append(buffer)
            buffer = ""
        else:
            buffer += char
    if not buffer:
        raise BindSpecError("an empty section between colons")
    fields.append(buffer)
    if len(fields) > 3:
        raise BindSpecError("too many colons")
    return fields


def _is_path(source: str) -> bool:
    """What the CLI sends as a bind (``.``, ``/``, ``~``, ``\\\\``, a drive) and any
    other source with a separator: never guessed to be a volume name."""
    return source[0] in "./~" or any(c in source for c in _SEPARATORS) or bool(_DRIVE.match(source))


def read_bind(raw: str) -> WindowsBind:
    """``raw`` (a ``HostConfig.Binds`` entry) as the CLI on Windows splits it."""
    linux = raw.split(":")
    linux_volume = None
    if 2 <= len(linux) <= 3 and linux[1].startswith("/") and linux[0] and not _is_path(linux[0]):
        linux_volume = linux[0]
    if len(raw) <= 2:  # the CLI: a container path alone
        return WindowsBind(linux_volume=linux_volume)
    fields = _fields(raw)
    if len(fields) == 1:  # an anonymous volume
        return WindowsBind(linux_volume=linux_volume)
    modes = fields[2].split(",") if len(fields) == 3 else []
    read_only = "ro" in modes and "rw" not in modes
    source = fields[0]
    if _is_path(source):
        return WindowsBind(source=source, linux_volume=linux_volume, read_only=read_only)
    return WindowsBind(volume=source, linux_volume=linux_volume, read_only=read_only)


# --- judging -----------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A place on the machine, and what it is (for the message)."""

    path: str
    what: str


def system_places(environ: Mapping[str, str]) -> tuple[tuple[Place, ...], tuple[Place, ...]]:
    """From the service's environment: the places no container may bind whatever the
    policy allows (Windows, Pullgate's and Docker's own), and those named in a refusal
    of a path outside the profile (``ProgramData``, ``Program Files``)."""

    def where(name: str, default: str) -> str:
        value = environ.get(name) or environ.get(name.upper()) or ""
        return value if _path_or_none(value) is not None else default

    windows = where("SystemRoot", "C:\\Windows")
    data = where("ProgramData", "C:\\ProgramData")
    programs = where("ProgramFiles", "C:\\Program Files")
    programs64 = where("ProgramW6432", programs)
    programs32 = where("ProgramFiles(x86)", "C:\\Program Files (x86)")
    never = (
        Place(windows, "Windows' own folder"),
        Place(data + "\\Pullgate", "Pullgate's own files"),
        Place(data + "\\Docker", "the Windows Docker daemon's data"),
        Place(data + "\\DockerDesktop", "Docker Desktop's machine-wide settings"),
        Place(programs64 + "\\Docker", "Docker Desktop's programs"),
        Place(programs64 + "\\Pullgate", "Pullgate's programs"),
    )
    named = (
        Place(data, "ProgramData, the machine's program data"),
        Place(programs64, "Program Files"),
        Place(programs, "Program Files"),
        Place(programs32, "Program Files (x86)"),
    )
    return never, named


@dataclass(frozen=True)
class WindowsPathFacts:
    """One path on the machine as it is now: whether it exists, whether it is a reparse
    point, and its reparse tag when that could be read (None: unknown)."""

    exists: bool
    reparse: bool = False
    tag: int | None = None

    @property
    def redirects(self) -> bool:
        """Opening it may lead elsewhere: any reparse point (a junction, symbolic link,
        mount point, or a tag not known) but a cloud file's placeholder (OneDrive's
        Files On-Demand, ``IO_REPARSE_TAG_CLOUD_*``: the folder's own content, fetched
        on use), which every folder under a known-folder-moved Documents is."""
        if not self.reparse:
            return False
        return self.tag is None or self.tag & _CLOUD_TAG_MASK != _CLOUD_TAG


@dataclass(frozen=True)
class WindowsProtection:
    """Whose profile a bind may use and what it may not reach, as written (they are
    cleaned here; one that is not a drive path counts for nothing).

    ``profile``: the requester's profile folder (ProfileList's ``ProfileImagePath`` of
    their SID), None when unknown; ``allowed``: the policy's ``allowed_host_paths``
    (the POSIX ones are ignored); ``no_bind``: never bound, nor what holds them (the
    machine's own, the agent's state and log folders); ``named``: places named in a
    refusal."""

    profile: str | None = None
    allowed: tuple[str, ...] = ()
    no_bind: tuple[Place, ...] = ()
    named: tuple[Place, ...] = ()


def walked(sources: Iterable[str]) -> list[str]:
    """Every folder (and file) the machine must look at for ``sources``: each prefix of
    each drive path, in order, once; sources that are not drive paths need none."""
    out: dict[str, None] = {}
    for source in sources:
        path = _path_or_none(source)
        if path is not None:
            out.update(dict.fromkeys(path.walked))
    return list(out)


def _places(places: Iterable[Place]) -> list[tuple[WindowsPath, str]]:
    out = []
    for place in places:
        path = _path_or_none(place.path)
        if path is not None:
            out.append((path, place.what))
    return out


def path_problem(
    source: str,
    spec: str,
    facts: Mapping[str, WindowsPathFacts],
    protection: WindowsProtection,
) -> str | None:
    """Why ``source`` (a bind's, or a local volume's ``device``) may not be bound on a
    Windows endpoint, or None. ``spec``: what the user wrote, for the message;
    ``facts``: each walked prefix as the machine shows it (:func:`walked`); one that
    could not be looked at is refused, since the walk could not be vouched for."""
    try:
        path = windows_path(source)
    except WindowsPathError as e:
        return f"{spec}: {source} {e}"
    shown = str(path)
    if not path.parts:
        return f"{spec}: {shown} is the whole {path.drive}: drive"
    profile = _path_or_none(protection.profile) if protection.profile else None
    never = _places(protection.no_bind)
    if profile is not None:
        never += [
            (WindowsPath(profile.drive, (*profile.parts, *rel.split("\\"))), what)
            for rel, what in PROFILE_NO_BIND
        ]
    for place, what in never:
        if path.within(place):
            return f"{spec}: {shown} is in {place} ({what}), which no container may bind"
        if path.holds(place):
            return f"{spec}: {shown} holds {place} ({what}), which no container may bind"
    allowed = [p for p in map(_path_or_none, protection.allowed) if p is not None]
    if not any(path.within(root) for root in ([profile] if profile else []) + allowed):
        return f"{spec}: {shown} {_outside(path, profile, _places(protection.named))}"
    for prefix in path.walked:
        fact = facts.get(prefix)
        if fact is None:
            return (
                f"{spec}: {prefix} could not be looked at, so where {shown} leads cannot "
                "be vouched for"
            )
        if fact.redirects:
            return (
                f"{spec}: {prefix} is a junction, symbolic link or mount point, so {shown} "
                "could lead anywhere; bind the folder it leads to"
            )
    return None


def _outside(
    path: WindowsPath, profile: WindowsPath | None, named: list[tuple[WindowsPath, str]]
) -> str:
    allowed = "the folders your organisation allows (containers.allowed_host_paths)"
    for place, what in named:
        if path.within(place):
            return f"is in {what} ({place}), outside your profile and {allowed}"
    if profile is None:
        return f"is outside {allowed}; your own profile folder could not be found"
    users = WindowsPath(profile.drive, profile.parts[:-1])
    if profile.parts and path.within(users) and not path.holds(profile):
        return f"is another user's profile or beside yours ({profile}), outside {allowed}"
    return f"is outside your profile ({profile}) and {allowed}"
