"""Following one BuildKit file sync (fsutil ``DiffCopy``) to learn the Dockerfile's bytes.

The daemon reads a build's Dockerfile from the client over the session: it calls
``/moby.filesync.v1.FileSync/DiffCopy`` on the client, which walks the local directory and
sends one ``PACKET_STAT`` per entry (an entry's ID is its 0-based index in that list) and
an empty ``PACKET_STAT`` ending the list; the daemon answers ``PACKET_REQ`` with the ID of
each regular file it wants, the client sends that file as ``PACKET_DATA`` packets ended by
an empty one, and ``PACKET_FIN`` / ``PACKET_ERR`` end the exchange (fsutil ``send.go``,
``receive.go``). The shim sits between them and sees both directions.

Two things make "the bytes the shim saw" equal to "the bytes the daemon will hold":

* The daemon keeps a copy of each local from earlier builds and requests only the files
  whose size or modification time changed (``diff_containerd.go`` ``sameFile``), so an
  unchanged Dockerfile would never cross the shim. Every regular file's ``modTime`` is
  therefore rewritten to a ``stamp`` the caller makes unique per stream: the daemon then
  requests every file, and its copy is exactly what crossed.
* The client is untrusted: anything the daemon's receiver would read differently from
  this model (duplicate or unclean paths, links leaving the directory, data it did not
  ask for) is refused with :class:`FileSyncError` rather than guessed.

Pure core: packets in, packets and file contents out; the tunnel holds and relays.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from google.protobuf.message import DecodeError

from agent.core.inspection.buildkit.grpc import MAX_STATUS_MESSAGE
from agent.core.inspection.buildkit.protos.fsutil_types_pb2 import Packet

__all__ = ["MAX_ENTRIES", "MAX_LINK_HOPS", "DockerfileSync", "FileSyncError", "sender_error"]

#: Most entries one sync may list; the Dockerfile's local holds a handful (the frontend
#: asks only for the Dockerfile and its ignore file), a hostile client could send millions.
MAX_ENTRIES = 100_000
#: Most symbolic links followed while resolving one path (Linux's own limit).
MAX_LINK_HOPS = 40

# Go os.FileMode type bits (the permission bits are irrelevant here).
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_MODE_DEVICE = 1 << 26
_MODE_NAMED_PIPE = 1 << 25
_MODE_SOCKET = 1 << 24
_MODE_CHAR_DEVICE = 1 << 21
_MODE_IRREGULAR = 1 << 19
_MODE_TYPE = (
    _MODE_DIR
    | _MODE_SYMLINK
    | _MODE_DEVICE
    | _MODE_NAMED_PIPE
    | _MODE_SOCKET
    | _MODE_CHAR_DEVICE
    | _MODE_IRREGULAR
)

#: fsutil's receiver skips this name in metadata transfers without counting its ID, so
#: IDs after it would mean other files to the daemon than to the shim.
_METADATA_PATH = ".fsutil-metadata"
#: Marks, in the stack of names still to walk, where a link's target ends.
_LINK_END = "\x00end-of-link"


MAX_ERROR_BYTES = 1024
"""How much of a client's PACKET_ERR text is kept, to quote in the build's error."""


class FileSyncError(ValueError):
    """A file sync the shim cannot follow with certainty; the build cannot be decided."""


class _Kind(Enum):
    REGULAR = "regular file"
    HARDLINK = "hard link"
    DIR = "directory"
    SYMLINK = "symbolic link"
    SPECIAL = "special file"


@dataclass(frozen=True)
class _Entry:
    id: int
    path: str
    kind: _Kind
    linkname: str


def _kind(mode: int, linkname: str) -> _Kind:
    """What the receiver's disk writer makes of a stat (``diskwriter.go`` ``HandleChange``,
    whose cases are tried in this order)."""
    if mode & _MODE_DIR:
        return _Kind.DIR
    if mode & (_MODE_DEVICE | _MODE_NAMED_PIPE):
        return _Kind.SPECIAL
    if mode & _MODE_SYMLINK:
        return _Kind.SYMLINK
    if mode & _MODE_TYPE:
        return _Kind.SPECIAL  # a socket or irregular file: the receiver cannot fill it
    return _Kind.HARDLINK if linkname else _Kind.REGULAR


def _check_path(path: str, what: str) -> None:
    """A path as fsutil's validator accepts it: relative, clean, not leaving the root.

    A backslash is a separator to a Windows daemon and a name character to a Linux
    one, and NUL no file system stores: both are refused, not interpreted.
    """
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or posixpath.normpath(path) != path
        or path in {".", ".."}
        or path.startswith("../")
    ):
        raise FileSyncError(f"{what} {path!r} is not a clean relative path")


def sender_error(message: str) -> bytes:
    """A ``PACKET_ERR`` as the client (the sender) would send it, carrying ``message``.

    The shim ends a refused sync with it rather than with a gRPC status alone: fsutil's
    receiver (``receive.go``) runs its file walk on the stream's context, which gRPC
    cancels as it hands back a status, so the daemon sometimes reports that walk's
    "context canceled" instead of the status; a ``PACKET_ERR`` ends the receive first,
    with the text intact ("error from sender: ...").

    The text is cut as the status's is (``grpc.MAX_STATUS_MESSAGE``): the packet must fit
    one DATA frame (16 KiB at least), or the shim sends the status alone; a long
    ``messages.contact`` made it do so.
    """
    if len(message) > MAX_STATUS_MESSAGE:
        message = message[: MAX_STATUS_MESSAGE - 1] + "\u2026"
    return Packet(type=Packet.PACKET_ERR, data=message.encode()).SerializeToString()


def _decode(payload: bytes, side: str) -> Packet:
    packet = Packet()
    try:
        packet.ParseFromString(payload)
    except DecodeError as e:
        raise FileSyncError(f"the {side} sent a file sync packet that does not decode") from e
    if packet.type not in Packet.PacketType.values():
        raise FileSyncError(f"the {side} sent a file sync packet of unknown type {packet.type}")
    return packet


class DockerfileSync:
    """One ``DiffCopy`` stream of the local that holds the Dockerfile, followed packet by
    packet; ``content`` then says what a reader of a path inside it gets.

    ``paths``: the cleaned Dockerfile paths the pending builds may read. ``stamp``: the
    ``modTime`` every regular file is given, unique per stream (the caller's guarantee),
    so the daemon requests every file. ``max_bytes``: most file data kept in total.
    """

    def __init__(
        self, paths: Collection[str], *, stamp: int, max_bytes: int = 4 * 1024 * 1024
    ) -> None:
        for path in paths:
            _check_path(path, "the Dockerfile path")
        if not -(2**63) <= stamp < 2**63:
            raise ValueError("stamp must fit a Go int64")
        self._paths = tuple(dict.fromkeys(paths))
        self._stamp = stamp
        self._max_bytes = max_bytes
        self._entries: list[_Entry] = []
        self._by_path: dict[str, _Entry] = {}
        self._listed = False
        self._requested: set[int] = set()
        self._data: dict[int, bytearray] = {}
        self._ended: set[int] = set()
        self._total = 0
        self._data_started = False
        self._receiver_done = False
        self._sender_error: str | None = None

    # --- state --------------------------------------------------------------------

    @property
    def listed(self) -> bool:
        """Whether the sender has ended its list of entries."""
        return self._listed

    @property
    def data_started(self) -> bool:
        """Whether file data has begun to flow: from then on the tunnel holds the sender's
        messages until the build is decided, so the daemon has no Dockerfile before."""
        return self._data_started

    @property
    def sender_error(self) -> str | None:
        """The text of the sender's ``PACKET_ERR``, if it sent one."""
        return self._sender_error

    @property
    def complete(self) -> bool:
        """Whether every path the builds may read is known: the list has ended and each
        path leads to nothing, or to a file whose data has ended (or the daemon finished
        without it, which ``content`` refuses). A path that cannot be resolved counts as
        known: ``content`` raises for it."""
        if not self._listed:
            return False
        for path in self._paths:
            try:
                entry = self._target(path)
            except FileSyncError:
                continue
            if entry is not None and entry.kind is _Kind.HARDLINK:
                entry = self._by_path[entry.linkname]  # its data is its target's
            if entry is None or entry.kind is not _Kind.REGULAR:
                continue
            if entry.id not in self._ended and not self._receiver_done:
                return False
        return True

    # --- packets ------------------------------------------------------------------

    def sender_message(self, payload: bytes) -> bytes:
        """Follow one message from the client (the sender); return what to relay.

        A regular file's stat is re-encoded with ``modTime`` set to the stamp; every
        other message is relayed as it came.
        """
        packet = _decode(payload, "client")
        kind = packet.type
        if kind == Packet.PACKET_STAT:
            if not packet.HasField("stat"):
                if self._listed:
                    raise FileSyncError("the client ended its file list twice")
                self._listed = True
                return payload
            rewritten = self._stat(packet)
            return payload if rewritten is None else rewritten
        if kind == Packet.PACKET_DATA:
            self._file_data(packet.ID, packet.data)
            return payload
        if kind == Packet.PACKET_ERR:
            # Only quoted back in an error: a client's megabyte of text is cut short.
            self._sender_error = packet.data[:MAX_ERROR_BYTES].decode("utf-8", "replace")
            return payload
        if kind == Packet.PACKET_FIN:
            return payload
        raise FileSyncError("the client sent a file request, which only the daemon sends")

    def receiver_message(self, payload: bytes) -> None:
        """Follow one message from the daemon (the receiver)."""
        packet = _decode(payload, "daemon")
        kind = packet.type
        if kind == Packet.PACKET_REQ:
            entry = self._entries[packet.ID] if len(self._entries) > packet.ID else None
            if entry is None or entry.kind is not _Kind.REGULAR:
                raise FileSyncError(f"the daemon requested file {packet.ID}, which is no file")
            if packet.ID in self._requested:
                raise FileSyncError(f"the daemon requested file {packet.ID} twice")
            self._requested.add(packet.ID)
        elif kind in (Packet.PACKET_FIN, Packet.PACKET_ERR):
            self._receiver_done = True
        else:
            raise FileSyncError(
                f"the daemon sent a {Packet.PacketType.Name(kind)} packet, which only "
                "the client sends"
            )

    def _stat(self, packet: Packet) -> bytes | None:
        """Record one listed entry; the re-encoded packet for a file, else None."""
        if self._listed:
            raise FileSyncError("the client sent a second file list")
        if len(self._entries) >= MAX_ENTRIES:
            raise FileSyncError(f"the client listed more than {MAX_ENTRIES} entries")
        stat = packet.stat
        path = stat.path
        _check_path(path, "the client listed")
        if path == _METADATA_PATH:
            raise FileSyncError(f"the client listed {_METADATA_PATH!r}, a name fsutil reserves")
        if path in self._by_path:
            raise FileSyncError(f"the client listed {path!r} twice")
        parent = posixpath.dirname(path)
        if parent and (parent not in self._by_path or self._by_path[parent].kind is not _Kind.DIR):
            raise FileSyncError(f"the client listed {path!r} before its directory")
        kind = _kind(stat.mode, stat.linkname)
        if kind is _Kind.HARDLINK:
            target = self._by_path.get(stat.linkname)
            if target is None or target.kind is not _Kind.REGULAR:
                raise FileSyncError(
                    f"the client listed {path!r} as a hard link to {stat.linkname!r}, "
                    "which is no file listed before it"
                )
        entry = _Entry(len(self._entries), path, kind, stat.linkname)
        self._entries.append(entry)
        self._by_path[path] = entry
        if kind not in (_Kind.REGULAR, _Kind.HARDLINK):
            return None
        stat.modTime = self._stamp
        return packet.SerializeToString()

    def _file_data(self, file_id: int, data: bytes) -> None:
        self._data_started = True
        if file_id not in self._requested:
            raise FileSyncError(f"the client sent data for file {file_id}, which was not requested")
        if file_id in self._ended:
            raise FileSyncError(f"the client sent data for file {file_id} after its end")
        if not data:
            self._ended.add(file_id)
            return
        self._total += len(data)
        if self._total > self._max_bytes:
            raise FileSyncError(
                f"the client sent more than {self._max_bytes} bytes of files with the Dockerfile"
            )
        self._data.setdefault(file_id, bytearray()).extend(data)

    # --- reading ------------------------------------------------------------------

    def content(self, path: str) -> bytes | None:
        """The bytes a reader of ``path`` in the synced directory gets, None if nothing
        readable is there (absent, a directory, or a path through a file).

        Symbolic links are followed inside the directory as the daemon's reader does
        (absolute targets from its root); a link leaving it, a loop, a device or a file
        whose data has not arrived raise :class:`FileSyncError`.
        """
        _check_path(path, "the Dockerfile path")
        if not self._listed:
            raise FileSyncError("the client has not finished listing its files")
        entry = self._target(path)
        if entry is None:
            return None
        if entry.kind is _Kind.HARDLINK:
            entry = self._by_path[entry.linkname]
        if entry.kind is not _Kind.REGULAR:
            raise FileSyncError(f"{path!r} is a {entry.kind.value}, which Pullgate cannot read")
        if entry.id not in self._ended:
            raise FileSyncError(f"the data of {entry.path!r} has not arrived in full")
        return bytes(self._data.get(entry.id, b""))

    def _target(self, path: str) -> _Entry | None:
        """The entry ``path`` leads to after links, None if it leads nowhere readable.

        Links are resolved component by component, as the kernel does. The daemon's
        reader (continuity ``fs.RootPath``) instead joins a link's target into the path
        text and cleans it, so a ``..`` there cancels the name before it without looking
        at it; where the two could differ (``..`` after a link, a missing name or a file)
        this raises instead of choosing one.
        """
        todo: list[tuple[str, bool]] = [(name, False) for name in reversed(path.split("/"))]
        current: list[str] = []  # the real directories walked so far
        entry: _Entry | None = None
        hops = 0
        after_dir = False  # the last name walked was a real directory (or a sound "..")
        fresh = False  # at the start of a link's target: ".." leaves the link's directory
        while todo:
            name, starts_target = todo.pop()
            fresh = fresh or starts_target
            if name == _LINK_END:
                after_dir = False  # a ".." next would cancel the link's name, unresolved
                continue
            if name in ("", "."):
                continue
            if name == "..":
                if not (fresh or after_dir):
                    raise FileSyncError(f"{path!r} goes through '..' after a link")
                if not current:
                    raise FileSyncError(f"{path!r} leads out of the synced directory")
                current.pop()
                entry = self._by_path.get("/".join(current)) if current else None
                after_dir, fresh = True, False
                continue
            fresh = False
            entry = self._by_path.get("/".join([*current, name]))
            rest = [part for part, _ in todo if part != _LINK_END]
            if entry is None:
                if ".." in rest:
                    raise FileSyncError(f"{path!r} goes through '..' after a missing name")
                return None
            if entry.kind is _Kind.SYMLINK:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise FileSyncError(f"{path!r} goes through more than {MAX_LINK_HOPS} links")
                target = entry.linkname
                if not target or "\x00" in target:
                    raise FileSyncError(f"the link {entry.path!r} has no valid target")
                if target.startswith("/"):
                    current = []
                todo.append((_LINK_END, False))
                parts = target.split("/")
                todo.extend((part, index == 0) for index, part in reversed(list(enumerate(parts))))
                continue
            if entry.kind is not _Kind.DIR and rest:
                if ".." in rest or all(part in ("", ".") for part in rest):
                    # "file/", "file/." or "file/..": readers differ on what that opens.
                    raise FileSyncError(f"{path!r} names a file as a directory")
                return None  # a path through a file: the read fails
            current.append(name)
            after_dir = entry.kind is _Kind.DIR
        if not current or entry is None or entry.kind is _Kind.DIR:
            return None  # a directory (the root too): reading it fails
        return entry
