"""Incremental scanner for the tar bodies of ``POST /build`` and ``POST /images/load``.

Pure core (sans-IO, like h11): the shim feeds body chunks as they pass through and asks
for the few small member files it needs (the Dockerfile; ``manifest.json``, ``index.json``,
``repositories``).  Nothing else is buffered, so a multi-gigabyte body costs a few
kilobytes of memory; a compressed body is inflated in bounded pieces, so a zip bomb costs
CPU, never memory.

The daemon reads these bodies with moby's ``DecompressStream`` and Go's ``archive/tar``
and extracts them with moby's ``Unpack``.  This scanner reads them the same way, because
any difference is a way to show Pullgate one Dockerfile and the daemon another:

* Compression is detected from the first ten bytes like moby's ``DetectCompression``
  (gzip ``1f 8b 08``, bzip2 ``BZh``, xz ``fd 37 7a 58 5a 00``); zstd (a frame or a
  skippable frame) is refused, since the standard library cannot inflate it.  Like Go's
  readers, concatenated gzip / bzip2 / xz streams are read as one.
* Headers are checked like Go's ``Reader.next``/``readHeader`` (``src/archive/tar``):
  checksum as unsigned or signed sum, every numeric field Go parses must parse, USTAR and
  STAR prefixes, GNU ``L``/``K`` long names, PAX ``x`` records (only the last ``x`` before
  an entry counts; a ``GNU.sparse.name`` renames the entry; empty values keep the header
  field), and a PAX ``g`` header is validated but changes nothing (Go hands it back as an
  entry of its own and moby ignores it), also dropping meta headers pending before it.
* The archive ends at two zero blocks; a zero block followed by anything else is an
  error.  Like Go, a body that stops exactly at a header boundary, after one zero block or
  inside the padding after a member's data also ends the archive cleanly (``finish``
  accepts it); stopping inside a header or inside member data does not.
* Names are cleaned like ``filepath.Clean`` + ``Join`` in ``Unpack``: leading ``/``,
  ``.`` and empty components go, ``..`` is resolved, and a relative ``..`` that climbs
  out of the root is refused (the daemon refuses it as a breakout).  The daemon extracts
  every entry in order, so the last entry for a name wins whatever its type.

* Extraction follows symbolic links in the parent directories of each name (``Unpack``
  only ``Lstat``s the last component), so an entry written "through" a link replaces a
  file the scanner saw under another name: ``x -> .`` then ``x/Dockerfile`` overwrites
  ``Dockerfile``.  No Docker client writes such archives (they never descend into a
  link), so every link of the archive is tracked (also a hard link to a link, which
  ``link(2)`` makes another link) and an entry whose path, or whose hard-link target,
  passes through one is refused: the final content would be ambiguous.

What the caller must still do: resolve or refuse wanted names that are links themselves
(:meth:`TarScanner.symlinks`, the target exactly as written), refuse hard links whose
target was not captured (:meth:`TarScanner.hardlinks`), and refuse a wanted name that
only resolves through a linked parent directory (:meth:`TarScanner.link_on_path`).  Hard
links whose target was captured are resolved here, with the content the target had at
that point of the archive, exactly like ``os.Link`` during extraction.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["TarMember", "TarScanError", "TarScanner"]

Compression = Literal["gzip", "bzip2", "xz"]

_BLOCK: Final = 512
_ZERO_BLOCK: Final = bytes(_BLOCK)
#: Largest decompressed piece held at once; bounds memory whatever the compression ratio.
_PIECE: Final = 64 * 1024
#: moby's DecompressStream peeks this many bytes to detect compression.
_DETECT_LEN: Final = 10

_MAGIC: Final[dict[Compression, bytes]] = {
    "gzip": b"\x1f\x8b\x08",
    "bzip2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
}
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE: Final = 0x184D2A50
_ZSTD_SKIPPABLE_MASK: Final = 0xFFFFFFF0

# Parser states.
_HEADER: Final = 0  # expecting a header block (or the first zero block)
_ZERO1: Final = 1  # saw one zero block; the next must be zero too
_DATA: Final = 2  # inside a member's data
_PAD: Final = 3  # inside the padding after a member's data
_SPARSE_EXT: Final = 4  # reading old-GNU sparse extension blocks
_DONE: Final = 5  # end-of-archive marker seen

# What happens to the data of the current entry.
_SKIP: Final = 0
_MEMBER: Final = 1
_PAX: Final = 2
_GLOBAL_PAX: Final = 3
_LONG_NAME: Final = 4
_LONG_LINK: Final = 5

# Go's archive/tar type flags.
_REG: Final = ord("0")
_REGA: Final = 0
_LINK: Final = ord("1")
_SYMLINK: Final = ord("2")
_DIR: Final = ord("5")
_CONT: Final = ord("7")
_XHEADER: Final = ord("x")
_XGLOBAL: Final = ord("g")
_GNU_LONGNAME: Final = ord("L")
_GNU_LONGLINK: Final = ord("K")
_GNU_SPARSE: Final = ord("S")
#: isHeaderOnlyType in Go's reader: these never have a data section, whatever the size says.
_HEADER_ONLY: Final = frozenset(b"123456")

_FMT_V7: Final = 1
_FMT_USTAR: Final = 2
_FMT_GNU: Final = 3
_FMT_STAR: Final = 4

_OCTAL_DIGITS: Final = b"01234567"
_HIGH_BYTES: Final = bytes(range(128, 256))
_DECIMAL: Final = re.compile(rb"[+-]?[0-9]+")
_INT64_MIN: Final = -(1 << 63)
_INT64_LIMIT: Final = 1 << 63


class TarScanError(ValueError):
    """The body cannot be inspected; the message says why (meant for a 400 to the client)."""


@dataclass(frozen=True)
class TarMember:
    """A captured member: its cleaned path inside the archive and its whole content."""

    name: str
    data: bytes


class TarScanner:
    """Reads a (possibly compressed) tar stream chunk by chunk and captures wanted members.

    ``wanted`` is asked once per entry with the cleaned name.  Limits: a wanted member
    larger than ``max_member_size``, more than ``max_members_captured`` captures, or a
    PAX / GNU long-name header larger than ``max_header_bytes`` (Go's own limit is 1 MiB)
    is refused with :class:`TarScanError` rather than guessed at.  After the first
    :class:`TarScanError` every further call raises it again.
    """

    def __init__(
        self,
        wanted: Callable[[str], bool],
        *,
        max_member_size: int = 1 << 20,
        max_members_captured: int = 16,
        max_header_bytes: int = 1 << 20,
        max_links: int = 1 << 17,
    ) -> None:
        self._wanted = wanted
        self._max_links = max_links
        self._max_member_size = max_member_size
        self._max_members_captured = max_members_captured
        self._max_header_bytes = max_header_bytes

        self._bytes_in = 0
        self._error: str | None = None
        self._finished = False

        self._head = bytearray()  # first bytes, until compression is known
        self._detected = False
        self._decoder: _Decoder | None = None

        self._state = _HEADER
        self._offset = 0  # decompressed bytes consumed by the tar parser
        self._block = bytearray()  # a header block split across chunks
        self._remaining = 0  # bytes left in the current data or padding section
        self._pad = 0  # padding after the current data section
        self._sink_kind = _SKIP
        self._sink = bytearray()
        self._entry_name = ""  # cleaned name of the entry whose data is being read
        self._entry_offset = 0  # offset of that entry's header block
        self._entry_size = 0
        self._sparse_size = 0  # data size of an old-GNU sparse entry, after its extensions
        self._end_offset: int | None = None

        # Meta headers waiting for the entry they describe.
        self._pax: dict[bytes, bytes] | None = None
        self._long_name = b""
        self._long_link = b""

        self._members: dict[str, TarMember] = {}
        self._symlinks: dict[str, str] = {}
        self._hardlinks: dict[str, str] = {}
        self._captured: list[TarMember] = []
        #: Every name of the archive that is a symbolic link once extracted so far (a
        #: superset: names under a directory that was later replaced may linger, which
        #: only makes the scanner stricter).
        self._links: dict[str, str] = {}

    # --- public API ---------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True once the end-of-archive marker (two zero blocks) has been read."""
        return self._state == _DONE

    @property
    def end_started(self) -> bool:
        """True once the bytes parsed may be the start of the end-of-archive marker.

        The daemon's tar reader may act as soon as it has read the whole marker, so a
        proxy that must decide first holds back everything from this point on: a zero
        block (or the zero-filled start of one) at a header boundary, or the marker done.
        """
        state = self._state
        if state in (_ZERO1, _DONE):
            return True
        return state == _HEADER and bool(self._block) and not any(self._block)

    @property
    def compression(self) -> Compression | None:
        """The detected compression; ``None`` for a plain tar or while still undetected."""
        return self._decoder.kind if self._decoder is not None else None

    @property
    def bytes_in(self) -> int:
        """Body bytes fed so far, including any after the end of the archive."""
        return self._bytes_in

    @property
    def bytes_out(self) -> int:
        """Decompressed tar bytes read so far, up to the end of the end-of-archive marker.

        It stops there (nothing after the marker is parsed or inflated), so it does not
        depend on how the body was chunked.
        """
        return self._offset

    @property
    def end_offset(self) -> int | None:
        """Decompressed offset just past the end-of-archive marker, once it is seen."""
        return self._end_offset

    def members(self) -> dict[str, TarMember]:
        """Wanted names whose last entry is a regular file (or a resolved hard link)."""
        return dict(self._members)

    def symlinks(self) -> dict[str, str]:
        """Wanted names whose last entry is a symbolic link, with the target as written.

        The daemon reads the Dockerfile (or manifest) after extracting everything, so
        the caller resolves these against the final :meth:`members`, inside the root.
        """
        return dict(self._symlinks)

    def hardlinks(self) -> dict[str, str]:
        """Wanted names whose last entry is a hard link to a target that was not captured.

        A hard link gets the target's content at the moment it is extracted, which this
        scanner only knows for captured targets; the caller should refuse these.
        """
        return dict(self._hardlinks)

    def link_on_path(self, name: str) -> str | None:
        """The first parent directory of ``name`` that is a symbolic link, if any.

        The daemon opens a wanted file through such links, so content captured under
        the literal name is not what it reads.
        """
        links = self._links
        if not links:
            return None
        i = name.find("/")
        while i >= 0:
            prefix = name[:i]
            if prefix in links:
                return prefix
            i = name.find("/", i + 1)
        return None

    def all_members(self) -> list[TarMember]:
        """Every capture in archive order, including ones a later entry replaced.

        Readers other than moby's extraction (containerd's importer for ``docker load``)
        may pick a different occurrence; checking them all is the safe superset.
        """
        return list(self._captured)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Scan the next chunk of the body; raises :class:`TarScanError` on bad input."""
        if self._error is not None:
            raise TarScanError(self._error)
        if self._finished:
            raise RuntimeError("TarScanner.feed() called after finish()")
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = view.nbytes
        if size == 0:
            return
        self._bytes_in += size
        if self._state == _DONE:
            return  # the daemon's tar reader stops at the marker too
        try:
            if not self._detected:
                self._head += view
                if len(self._head) < _DETECT_LEN:
                    return
                self._detect()
                view = memoryview(bytes(self._head))
                self._head = bytearray()
            self._route(view)
        except TarScanError as exc:
            self._error = str(exc)
            raise

    def finish(self) -> None:
        """Declare the end of the body; raises :class:`TarScanError` if it was cut short."""
        if self._error is not None:
            raise TarScanError(self._error)
        if self._finished:
            return
        self._finished = True
        try:
            if not self._detected:
                self._detect()
                head, self._head = bytes(self._head), bytearray()
                if head:
                    self._route(memoryview(head))
            self._check_clean_end()
        except TarScanError as exc:
            self._error = str(exc)
            raise

    # --- compression ----------------------------------------------------------------

    def _detect(self) -> None:
        head = bytes(self._head[:_DETECT_LEN])
        self._detected = True
        if head.startswith(_ZSTD_MAGIC) or (
            len(head) >= 8
            and int.from_bytes(head[:4], "little") & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE
        ):
            raise TarScanError(
                "zstd-compressed contexts cannot be inspected: send the archive "
                "uncompressed or compressed with gzip, bzip2 or xz"
            )
        for kind, magic in _MAGIC.items():
            if head.startswith(magic):
                self._decoder = _Decoder(kind)
                return

    def _route(self, view: memoryview) -> None:
        decoder = self._decoder
        if decoder is None:
            self._consume(view)
            return
        pieces = decoder.pieces(view)
        try:
            for piece in pieces:
                self._consume(memoryview(piece))
                if self._state == _DONE:
                    break
        finally:
            pieces.close()

    def _check_clean_end(self) -> None:
        if self._state == _DONE:
            return
        if self._decoder is not None:
            problem = self._decoder.truncation()
            if problem is not None:
                raise TarScanError(problem)
        state = self._state
        if state in (_HEADER, _ZERO1) and self._block:
            raise TarScanError(
                f"truncated tar archive: the body ends inside the header block at offset "
                f"{self._offset - len(self._block)}"
            )
        if state == _DATA:
            done = self._entry_size - self._remaining
            raise TarScanError(
                f"truncated tar archive: the body ends inside member {self._entry_name!r} "
                f"({done} of {self._entry_size} bytes)"
            )
        if state == _SPARSE_EXT:
            raise TarScanError(
                f"truncated tar archive: the body ends inside the sparse map of member "
                f"{self._entry_name!r}"
            )
        # _HEADER / _ZERO1 at a block boundary, or _PAD: Go's reader reports io.EOF there.

    # --- tar parsing ----------------------------------------------------------------

    def _consume(self, view: memoryview) -> None:
        """Advance the tar state machine over one decompressed piece."""
        pos = 0
        end = view.nbytes
        base = self._offset
        try:
            while pos < end:
                state = self._state
                if state in (_DATA, _PAD):
                    take = min(self._remaining, end - pos)
                    if state == _DATA and self._sink_kind != _SKIP:
                        self._sink += view[pos : pos + take]
                    pos += take
                    self._remaining -= take
                    if self._remaining == 0:
                        if state == _DATA:
                            self._offset = base + pos
                            self._end_data()
                        else:
                            self._state = _HEADER
                    continue
                if state == _DONE:
                    return
                if self._block:
                    take = min(_BLOCK - len(self._block), end - pos)
                    self._block += view[pos : pos + take]
                    pos += take
                    if len(self._block) < _BLOCK:
                        return
                    block = bytes(self._block)
                    self._block.clear()
                elif end - pos >= _BLOCK:
                    block = bytes(view[pos : pos + _BLOCK])
                    pos += _BLOCK
                else:
                    self._block += view[pos:end]
                    pos = end
                    return
                self._offset = base + pos
                self._on_block(block, base + pos - _BLOCK)
        finally:
            self._offset = base + pos

    def _on_block(self, block: bytes, offset: int) -> None:
        state = self._state
        if state == _HEADER:
            if block == _ZERO_BLOCK:
                self._state = _ZERO1
            else:
                self._read_header(block, offset)
        elif state == _ZERO1:
            if block != _ZERO_BLOCK:
                raise TarScanError(
                    f"invalid tar header at offset {offset}: a zero block must be followed "
                    "by a second zero block (end of archive)"
                )
            self._state = _DONE
            self._end_offset = offset + _BLOCK
        elif block[504] == 0:  # _SPARSE_EXT: the last extension block says no more follow
            self._begin_data(self._sparse_size)

    def _read_header(self, block: bytes, offset: int) -> None:
        def bad(reason: str) -> TarScanError:
            return TarScanError(f"invalid tar header at offset {offset}: {reason}")

        fmt = _header_format(block)
        if fmt is None:
            raise bad("checksum mismatch")
        typeflag = block[156]
        name = _c_string(block[0:100])
        linkname = _c_string(block[157:257])
        size = _parse_numeric(block[124:136])
        numbers_ok = size is not None and all(
            _parse_numeric(block[a:b]) is not None
            for a, b in ((100, 108), (108, 116), (116, 124), (136, 148))
        )
        if fmt != _FMT_V7:
            numbers_ok = numbers_ok and all(
                _parse_numeric(block[a:b]) is not None for a, b in ((329, 337), (337, 345))
            )
        prefix = b""
        if fmt == _FMT_USTAR:
            prefix = _c_string(block[345:500])
        elif fmt == _FMT_STAR:
            prefix = _c_string(block[345:476])
            numbers_ok = numbers_ok and all(
                _parse_numeric(block[a:b]) is not None for a, b in ((476, 488), (488, 500))
            )
        elif fmt == _FMT_GNU and any(
            block[a] != 0 and _parse_numeric(block[a:b]) is None
            for a, b in ((345, 357), (357, 369))
        ):
            # Go reads archives from pre-1.8 Go writers, which put a USTAR prefix here.
            candidate = _c_string(block[345:500])
            if candidate.isascii():
                prefix = candidate
        if not numbers_ok or size is None:
            raise bad("malformed numeric field")
        if prefix:
            name = prefix + b"/" + name
        if typeflag in _HEADER_ONLY:
            size = 0
        if size < 0:
            raise bad("negative size")

        if typeflag in (_XHEADER, _XGLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            if size > self._max_header_bytes:
                raise bad(
                    f"extended header of {size} bytes is larger than the limit of "
                    f"{self._max_header_bytes} bytes"
                )
            self._entry_name = name.decode("utf-8", "surrogateescape")
            self._entry_offset = offset
            self._sink_kind = {
                _XHEADER: _PAX,
                _XGLOBAL: _GLOBAL_PAX,
                _GNU_LONGNAME: _LONG_NAME,
                _GNU_LONGLINK: _LONG_LINK,
            }[typeflag]
            self._sink = bytearray()
            self._begin_data(size)
            return
        self._read_entry(
            block, offset, fmt=fmt, typeflag=typeflag, name=name, linkname=linkname, size=size
        )

    def _read_entry(
        self,
        block: bytes,
        offset: int,
        *,
        fmt: int,
        typeflag: int,
        name: bytes,
        linkname: bytes,
        size: int,
    ) -> None:
        """Apply pending meta headers to a real entry, then capture, record or skip it."""

        def bad(reason: str) -> TarScanError:
            return TarScanError(f"invalid tar header at offset {offset}: {reason}")

        pax, self._pax = self._pax, None
        long_name, self._long_name = self._long_name, b""
        long_link, self._long_link = self._long_link, b""
        if pax:
            for key, value in pax.items():
                if not value:
                    continue  # Go keeps the header's own field for an empty record
                if key == b"path":
                    name = value
                elif key == b"linkpath":
                    linkname = value
                elif key == b"size":
                    parsed = _parse_decimal(value)
                    if parsed is None:
                        raise bad(f"invalid PAX size {value[:40]!r}")
                    size = parsed
                elif key in (b"uid", b"gid"):
                    if _parse_decimal(value) is None:
                        raise bad(f"invalid PAX {key.decode()} {value[:40]!r}")
                elif key in (b"atime", b"mtime", b"ctime") and not _valid_pax_time(value):
                    raise bad(f"invalid PAX {key.decode()} {value[:40]!r}")
        if long_name:
            name = long_name
        if long_link:
            linkname = long_link
        if typeflag == _REGA:
            typeflag = _DIR if name.endswith(b"/") else _REG
        if typeflag in _HEADER_ONLY:
            size = 0
        if size < 0:
            raise bad("negative size")

        sparse = False
        extended = False
        if typeflag == _GNU_SPARSE:
            if fmt != _FMT_GNU:
                raise bad("sparse entry in a non-GNU header")
            sparse = True
            extended = block[482] != 0
        elif pax and _is_pax_sparse(pax):
            if typeflag in _HEADER_ONLY:
                raise bad("sparse map on an entry without data")
            sparse = True
            if pax.get(b"GNU.sparse.name"):
                name = pax[b"GNU.sparse.name"]
            real = pax.get(b"GNU.sparse.size") or pax.get(b"GNU.sparse.realsize")
            if real and _parse_decimal(real) is None:
                raise bad(f"invalid sparse size {real[:40]!r}")

        text = name.decode("utf-8", "surrogateescape")
        clean = _clean_path(text)
        target = ""
        if typeflag == _LINK:
            target = _clean_path(linkname.decode("utf-8", "surrogateescape"))
        self._entry_name = clean or text
        self._entry_offset = offset
        self._sink_kind = _SKIP
        if clean:
            self._track_links(clean, typeflag, linkname, target, offset)
        wanted = bool(clean) and self._wanted(clean)
        if wanted:
            self._record(
                clean, typeflag=typeflag, sparse=sparse, size=size, target=target, link=linkname
            )
        if extended:
            self._sparse_size = size
            self._state = _SPARSE_EXT
        else:
            self._begin_data(size)

    def _track_links(
        self, name: str, typeflag: int, linkname: bytes, target: str, offset: int
    ) -> None:
        """Refuse an entry extraction would write through a link; note the links made."""
        links = self._links
        if links:
            via = self.link_on_path(name)
            if via is not None:
                raise TarScanError(
                    f"member {name[:200]!r} at offset {offset} would be extracted through the "
                    f"symbolic link {via[:200]!r}: what it replaces cannot be told for sure"
                )
            if typeflag == _LINK and target:
                via = self.link_on_path(target)
                if via is not None:
                    raise TarScanError(
                        f"hard link {name[:200]!r} at offset {offset} points through the "
                        f"symbolic link {via[:200]!r}: what it links to cannot be told for sure"
                    )
        if typeflag == _SYMLINK or (typeflag == _LINK and target in links):
            if name not in links and len(links) >= self._max_links:
                raise TarScanError(
                    f"more than {self._max_links} symbolic links in the archive, the most "
                    "Pullgate tracks"
                )
            if typeflag == _SYMLINK:
                links[name] = linkname.decode("utf-8", "surrogateescape")
            else:
                links[name] = links[target]  # link(2) of a symlink makes another symlink
        elif links:
            links.pop(name, None)  # any other entry replaces what was there

    def _record(
        self, name: str, *, typeflag: int, sparse: bool, size: int, target: str, link: bytes
    ) -> None:
        """Update what the daemon will find at a wanted name once this entry is extracted."""
        self._members.pop(name, None)
        self._symlinks.pop(name, None)
        self._hardlinks.pop(name, None)
        if sparse:
            raise TarScanError(f"member {name!r} is a sparse file, which cannot be inspected")
        if typeflag in (_REG, _CONT):
            if size > self._max_member_size:
                raise TarScanError(
                    f"member {name!r} is {size} bytes, larger than the inspection limit of "
                    f"{self._max_member_size} bytes"
                )
            self._count_capture()
            self._sink_kind = _MEMBER
            self._sink = bytearray()
        elif typeflag == _SYMLINK:
            self._symlinks[name] = link.decode("utf-8", "surrogateescape")
        elif typeflag == _LINK:
            if target in self._members:
                self._count_capture()
                member = TarMember(name, self._members[target].data)
                self._members[name] = member
                self._captured.append(member)
            elif target in self._symlinks:
                # link(2) does not follow symlinks: the link is another symlink.
                self._symlinks[name] = self._symlinks[target]
            elif target in self._hardlinks:
                self._hardlinks[name] = self._hardlinks[target]
            else:
                self._hardlinks[name] = target
        # Directories, devices, FIFOs and unknown types replace the name with a non-file.

    def _count_capture(self) -> None:
        if len(self._captured) >= self._max_members_captured:
            raise TarScanError(
                f"more than {self._max_members_captured} wanted members in the archive"
            )

    def _begin_data(self, size: int) -> None:
        self._entry_size = size
        self._remaining = size
        self._pad = -size % _BLOCK
        self._state = _DATA
        if size == 0:
            self._end_data()

    def _end_data(self) -> None:
        kind = self._sink_kind
        if kind != _SKIP:
            data = bytes(self._sink)
            self._sink = bytearray()
            self._sink_kind = _SKIP
            if kind == _MEMBER:
                member = TarMember(self._entry_name, data)
                self._members[member.name] = member
                self._captured.append(member)
            elif kind == _LONG_NAME:
                self._long_name = _c_string(data)
            elif kind == _LONG_LINK:
                self._long_link = _c_string(data)
            else:
                records = _parse_pax(data)
                if records is None:
                    raise TarScanError(
                        f"invalid tar header at offset {self._entry_offset}: "
                        "malformed PAX extended header"
                    )
                if kind == _PAX:
                    self._pax = records  # a later 'x' replaces an earlier one, as in Go
                else:
                    # Go returns a global header as an entry of its own, which drops meta
                    # headers pending before it; moby then ignores it.
                    self._pax = None
                    self._long_name = b""
                    self._long_link = b""
        if self._pad:
            self._remaining = self._pad
            self._state = _PAD
        else:
            self._state = _HEADER


class _Decoder:
    """Inflates one compressed stream after another, in pieces of at most ``_PIECE``."""

    def __init__(self, kind: Compression) -> None:
        self.kind: Compression = kind
        self._magic = _MAGIC[kind]
        self._zlib: zlib._Decompress | None = None
        self._other: bz2.BZ2Decompressor | lzma.LZMADecompressor | None = None
        self._in_stream = False
        self._gap = b""  # start of a following stream, shorter than its magic
        self._zeros = 0  # xz stream padding seen before the next stream
        self._start()

    def _start(self) -> None:
        self._in_stream = True
        if self.kind == "gzip":
            self._zlib = zlib.decompressobj(wbits=31)
        elif self.kind == "bzip2":
            self._other = bz2.BZ2Decompressor()
        else:
            self._other = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def pieces(self, data: memoryview | bytes) -> Generator[bytes, None, None]:
        """Yield the decompressed output for ``data``; raise TarScanError on corruption."""
        try:
            while data:
                if not self._in_stream:
                    data = self._next_stream(bytes(data))
                    if not data:
                        return
                if self._zlib is not None:
                    data = yield from self._inflate_zlib(self._zlib, data)
                else:
                    assert self._other is not None
                    data = yield from self._inflate_other(self._other, data)
        except TarScanError:
            raise
        except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as exc:
            raise TarScanError(f"corrupt {self.kind} stream: {exc}") from exc

    def _inflate_zlib(
        self, stream: zlib._Decompress, data: memoryview | bytes
    ) -> Generator[bytes, None, bytes]:
        # Returns (as the generator's value) input left after the end of this stream.
        while True:
            backup = stream.copy()
            try:
                out = stream.decompress(data, _PIECE)
            except zlib.error:
                # zlib drops the output of a failing call; replay it a byte at a time so
                # the tar parser sees exactly what it would have seen with 1-byte chunks.
                yield from self._replay_zlib(backup, bytes(data))
                raise
            if out:
                yield out
            if stream.eof:
                self._in_stream = False
                return stream.unused_data
            data = stream.unconsumed_tail
            if not data and len(out) < _PIECE:
                return b""

    @staticmethod
    def _replay_zlib(stream: zlib._Decompress, data: bytes) -> Generator[bytes, None, None]:
        """Yield the output of ``data`` fed one byte at a time, up to the failing byte."""
        for i in range(len(data)):
            try:
                out = stream.decompress(data[i : i + 1], _PIECE)
                while True:
                    if out:
                        yield out
                    if stream.eof or len(out) < _PIECE:
                        break
                    out = stream.decompress(stream.unconsumed_tail, _PIECE)
            except zlib.error:
                return
            if stream.eof:
                return

    def _inflate_other(
        self, stream: bz2.BZ2Decompressor | lzma.LZMADecompressor, data: memoryview | bytes
    ) -> Generator[bytes, None, bytes]:
        out = stream.decompress(data, _PIECE)
        while True:
            if out:
                yield out
            if stream.eof:
                self._in_stream = False
                return stream.unused_data
            if stream.needs_input:
                return b""
            out = stream.decompress(b"", _PIECE)

    def _next_stream(self, data: bytes) -> bytes:
        """Handle bytes after a finished stream: another stream must start there."""
        if self.kind == "xz" and not self._gap:
            stripped = data.lstrip(b"\x00")  # xz stream padding
            self._zeros += len(data) - len(stripped)
            data = stripped
            if not data:
                return b""
        buf = self._gap + data
        if len(buf) < len(self._magic) and self._magic.startswith(buf):
            self._gap = buf
            return b""
        if not buf.startswith(self._magic) or (self.kind == "xz" and self._zeros % 4):
            raise TarScanError(f"unexpected data after the end of the {self.kind} stream")
        self._gap = b""
        self._zeros = 0
        self._start()
        return buf

    def truncation(self) -> str | None:
        """Why the compressed body is incomplete, or ``None`` if it ended cleanly."""
        if self._in_stream:
            return f"truncated {self.kind} stream: the body ends before the stream does"
        if self._gap:
            return f"truncated {self.kind} stream: the body ends inside a stream header"
        if self.kind == "xz" and self._zeros % 4:
            return "corrupt xz stream: stream padding is not a multiple of four bytes"
        return None


# --- field parsers (Go's archive/tar semantics) -------------------------------------


def _c_string(field: bytes) -> bytes:
    """Bytes up to the first NUL, like Go's parser.parseString."""
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _parse_octal(field: bytes) -> int | None:
    """Go's parseOctal: trim spaces and NULs, stop at a NUL, octal digits only."""
    text = _c_string(field.strip(b" \x00"))
    if not text:
        return 0
    if text.translate(None, _OCTAL_DIGITS):
        return None
    return int(text, 8)


def _parse_numeric(field: bytes) -> int | None:
    """Go's parseNumeric: GNU base-256 (two's complement) when the top bit is set."""
    if field and field[0] & 0x80:
        negative = bool(field[0] & 0x40)
        value = int.from_bytes(field, "big")
        if negative:
            value ^= (1 << (8 * len(field))) - 1
        value &= (1 << (8 * len(field) - 1)) - 1  # drop the marker bit
        if value >= _INT64_LIMIT:
            return None  # Go: integer overflow
        return ~value if negative else value
    return _parse_octal(field)


def _header_format(block: bytes) -> int | None:
    """Go's block.getFormat: ``None`` when the checksum matches neither sum."""
    stored = _parse_octal(block[148:156])
    if stored is None:
        return None
    field = block[148:156]
    unsigned = sum(block) - sum(field) + 8 * 0x20
    if stored != unsigned:
        high = (_BLOCK - len(block.translate(None, _HIGH_BYTES))) - (
            8 - len(field.translate(None, _HIGH_BYTES))
        )
        if stored != unsigned - 256 * high:
            return None
    magic = block[257:263]
    if magic == b"ustar\x00":
        return _FMT_STAR if block[508:512] == b"tar\x00" else _FMT_USTAR
    if magic == b"ustar " and block[263:265] == b" \x00":
        return _FMT_GNU
    return _FMT_V7


def _parse_decimal(text: bytes) -> int | None:
    """Go's strconv.ParseInt(text, 10, 64)."""
    if not _DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value < _INT64_LIMIT else None


def _valid_pax_time(text: bytes) -> bool:
    seconds, _, fraction = text.partition(b".")
    return _parse_decimal(seconds) is not None and not fraction.translate(None, b"0123456789")


def _parse_pax(buf: bytes) -> dict[bytes, bytes] | None:
    """Go's parsePAX / parsePAXRecord: ``"%d %s=%s\\n"`` records; ``None`` if malformed."""
    records: dict[bytes, bytes] = {}
    sparse_map: list[bytes] = []
    pos = 0
    end = len(buf)
    while pos < end:
        space = buf.find(b" ", pos)
        if space < 0:
            return None
        length = _parse_decimal(buf[pos:space])
        if length is None or length < 5 or length > end - pos or length <= space + 1 - pos:
            return None
        stop = pos + length
        if buf[stop - 1] != 0x0A:
            return None
        key, eq, value = buf[space + 1 : stop - 1].partition(b"=")
        if not eq or not key:
            return None
        if key in (b"path", b"linkpath", b"uname", b"gname"):
            if b"\x00" in value:
                return None
        elif b"\x00" in key:
            return None
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            expected = b"GNU.sparse.offset" if len(sparse_map) % 2 == 0 else b"GNU.sparse.numbytes"
            if key != expected or b"," in value:
                return None
            sparse_map.append(value)
        else:
            records[key] = value
        pos = stop
    if sparse_map:
        records[b"GNU.sparse.map"] = b",".join(sparse_map)
    return records


def _is_pax_sparse(pax: dict[bytes, bytes]) -> bool:
    """Go's readGNUSparsePAXHeaders version check (0.0, 0.1, 1.0; unknown ones are not)."""
    major = pax.get(b"GNU.sparse.major", b"")
    minor = pax.get(b"GNU.sparse.minor", b"")
    if (major == b"0" and minor in (b"0", b"1")) or (major == b"1" and minor == b"0"):
        return True
    if major or minor:
        return False
    return bool(pax.get(b"GNU.sparse.map"))


def _clean_path(name: str) -> str:
    """Where moby's Unpack puts ``name`` under the root ("" for the root itself).

    ``filepath.Clean`` keeps a leading ``..`` of a relative name, which ``Unpack`` then
    refuses as a breakout; for an absolute name ``..`` stops at the root.
    """
    absolute = name.startswith("/")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            elif not absolute:
                raise TarScanError(f"member {name[:200]!r} points outside the archive root")
            continue
        parts.append(part)
    return "/".join(parts)
