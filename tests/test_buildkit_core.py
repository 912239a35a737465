"""The pure BuildKit core: gRPC framing, following a file sync, a build's inputs and
what they decide. Bytes and values only: messages are built with the generated classes."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.inspection.buildkit import grpc
from agent.core.inspection.buildkit.filesync import DockerfileSync, FileSyncError
from agent.core.inspection.buildkit.protos.fsutil_types_pb2 import Packet, Stat

# --- gRPC framing ---------------------------------------------------------------------


def test_frame_and_read_back() -> None:
    reader = grpc.MessageReader()
    data = grpc.frame(b"hello") + grpc.frame(b"") + grpc.frame(b"x" * 300)
    assert reader.feed(data) == [b"hello", b"", b"x" * 300]
    assert reader.buffered == 0


def test_a_message_split_at_every_byte_reads_the_same() -> None:
    data = grpc.frame(b"first") + grpc.frame(b"second message")
    for cut in range(len(data) + 1):
        reader = grpc.MessageReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == [b"first", b"second message"], cut
        assert reader.buffered == 0


@given(
    st.lists(st.binary(max_size=64), max_size=8),
    st.lists(st.integers(min_value=0, max_value=600), max_size=12),
)
def test_messages_survive_arbitrary_splits(payloads: list[bytes], cuts: list[int]) -> None:
    data = b"".join(grpc.frame(p) for p in payloads)
    points = sorted({min(c, len(data)) for c in cuts})
    reader = grpc.MessageReader()
    got: list[bytes] = []
    last = 0
    for point in [*points, len(data)]:
        got += reader.feed(data[last:point])
        last = point
    assert got == payloads
    assert reader.buffered == 0


def test_incomplete_message_is_buffered() -> None:
    reader = grpc.MessageReader()
    assert reader.feed(grpc.frame(b"abcdef")[:7]) == []
    assert reader.buffered == 7


def test_compressed_message_is_refused() -> None:
    with pytest.raises(grpc.GrpcFramingError, match="compressed"):
        grpc.MessageReader().feed(b"\x01\x00\x00\x00\x01x")


def test_bad_flag_byte_is_refused() -> None:
    with pytest.raises(grpc.GrpcFramingError, match="flag"):
        grpc.MessageReader().feed(b"\x02\x00\x00\x00\x00")


def test_oversize_message_is_refused_from_its_prefix() -> None:
    reader = grpc.MessageReader(max_message=10)
    assert reader.feed(grpc.frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(grpc.GrpcFramingError, match="over the 10-byte limit"):
        reader.feed(b"\x00\x00\x00\x00\x0b")  # no body needed to refuse
    with pytest.raises(grpc.GrpcFramingError):
        grpc.MessageReader().feed(b"\x00\xff\xff\xff\xff")


def test_status_trailers_percent_encode_the_message() -> None:
    message = "pullgate: pulling docker.io/someuser/tool:latest is not allowed: 100% é\n"
    trailers = dict(grpc.status_trailers(grpc.PERMISSION_DENIED, message))
    assert trailers["grpc-status"] == "7"
    encoded = trailers["grpc-message"]
    assert "%25" in encoded and "%C3%A9" in encoded and "%0A" in encoded
    assert "pulling docker.io/someuser/tool:latest is not allowed" in encoded
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert unquote(encoded) == message


def test_status_codes() -> None:
    assert (grpc.OK, grpc.CANCELLED, grpc.UNKNOWN, grpc.INVALID_ARGUMENT) == (0, 1, 2, 3)
    assert (grpc.PERMISSION_DENIED, grpc.RESOURCE_EXHAUSTED) == (7, 8)
    assert (grpc.FAILED_PRECONDITION, grpc.UNAVAILABLE) == (9, 14)


# --- file sync ------------------------------------------------------------------------

MODE_DIR = 1 << 31 | 0o755
MODE_LINK = 1 << 27 | 0o777
MODE_FILE = 0o644
MODE_FIFO = 1 << 25 | 0o644
STAMP = 1_700_000_000_123_456_789


def stat(path: str, mode: int = MODE_FILE, link: str = "", mtime: int = 5, size: int = 0) -> bytes:
    return Packet(
        type=Packet.PACKET_STAT,
        stat=Stat(path=path, mode=mode, linkname=link, modTime=mtime, size=size, uid=1),
    ).SerializeToString()


END = Packet(type=Packet.PACKET_STAT).SerializeToString()
FIN = Packet(type=Packet.PACKET_FIN).SerializeToString()


def req(file_id: int) -> bytes:
    return Packet(type=Packet.PACKET_REQ, ID=file_id).SerializeToString()


def data(file_id: int, chunk: bytes) -> bytes:
    return Packet(type=Packet.PACKET_DATA, ID=file_id, data=chunk).SerializeToString()


def sync_of(entries: list[bytes], paths: tuple[str, ...] = ("Dockerfile",)) -> DockerfileSync:
    sync = DockerfileSync(paths, stamp=STAMP)
    for entry in entries:
        sync.sender_message(entry)
    sync.sender_message(END)
    return sync


def state(sync: DockerfileSync, name: str) -> bool:
    """A property read afresh (so the type checker does not carry it across calls)."""
    value = getattr(sync, name)
    assert isinstance(value, bool)
    return value


def send_file(sync: DockerfileSync, file_id: int, content: bytes) -> None:
    sync.receiver_message(req(file_id))
    if content:
        sync.sender_message(data(file_id, content))
    sync.sender_message(data(file_id, b""))


def test_regular_file_stat_gets_the_stamp_and_keeps_the_rest() -> None:
    sync = DockerfileSync(["Dockerfile"], stamp=STAMP)
    out = Packet.FromString(sync.sender_message(stat("Dockerfile", mtime=42, size=7)))
    assert out.stat.modTime == STAMP
    assert (out.stat.path, out.stat.size, out.stat.mode, out.stat.uid) == (
        "Dockerfile",
        7,
        0o644,
        1,
    )
    directory = stat("sub", MODE_DIR, mtime=42)
    assert sync.sender_message(directory) == directory
    link = stat("sub/x", MODE_LINK, link="../Dockerfile", mtime=42)
    assert sync.sender_message(link) == link


def test_unknown_stat_fields_survive_the_rewrite() -> None:
    extra = stat("Dockerfile") + b"\x2a\x03abc"  # field 5 (unknown to Packet), bytes
    out = DockerfileSync(["Dockerfile"], stamp=STAMP).sender_message(extra)
    assert out.endswith(b"\x2a\x03abc")


def test_dockerfile_read_through_the_whole_exchange() -> None:
    sync = DockerfileSync(["Dockerfile", "dockerfile"], stamp=STAMP)
    sync.sender_message(stat(".dockerignore"))
    sync.sender_message(stat("Dockerfile"))
    assert not state(sync, "listed") and not state(sync, "complete")
    sync.sender_message(END)
    assert state(sync, "listed") and not state(sync, "complete") and not state(sync, "data_started")
    sync.receiver_message(req(0))
    sync.receiver_message(req(1))
    sync.sender_message(data(1, b"FROM alpine\n"))
    assert state(sync, "data_started") and not state(sync, "complete")
    sync.sender_message(data(1, b"FROM someuser/tool\n"))
    sync.sender_message(data(1, b""))
    assert state(sync, "complete")  # .dockerignore is not needed
    assert sync.content("Dockerfile") == b"FROM alpine\nFROM someuser/tool\n"
    assert sync.content("dockerfile") is None
    sync.receiver_message(FIN)
    sync.sender_message(FIN)
    assert sync.sender_error is None


def test_data_of_files_interleaves() -> None:
    sync = sync_of([stat("Dockerfile"), stat("a")], ("Dockerfile", "a"))
    sync.receiver_message(req(0))
    sync.receiver_message(req(1))
    sync.sender_message(data(1, b"A1"))
    sync.sender_message(data(0, b"D1"))
    sync.sender_message(data(1, b"A2"))
    sync.sender_message(data(0, b""))
    assert not state(sync, "complete")
    sync.sender_message(data(1, b""))
    assert state(sync, "complete")
    assert (sync.content("Dockerfile"), sync.content("a")) == (b"D1", b"A1A2")


def test_empty_file() -> None:
    sync = sync_of([stat("Dockerfile")])
    send_file(sync, 0, b"")
    assert sync.content("Dockerfile") == b""


def test_absent_dockerfile_is_complete_once_listed() -> None:
    sync = sync_of([stat("other")])
    assert state(sync, "complete")
    assert sync.content("Dockerfile") is None


@given(st.binary(min_size=1, max_size=200), st.lists(st.integers(1, 50), max_size=10))
def test_dockerfile_in_many_small_packets(content: bytes, sizes: list[int]) -> None:
    sync = sync_of([stat("Dockerfile")])
    sync.receiver_message(req(0))
    at = 0
    for size in [*sizes, len(content)]:
        if at < len(content):
            sync.sender_message(data(0, content[at : at + size]))
            at += size
    sync.sender_message(data(0, b""))
    assert state(sync, "complete")
    assert sync.content("Dockerfile") == content


def test_ids_count_directories_and_links() -> None:
    sync = sync_of(
        [
            stat("a", MODE_DIR),
            stat("a/b", MODE_LINK, link="x"),
            stat("sub", MODE_DIR),
            stat("sub/Dockerfile"),
        ],
        ("sub/Dockerfile",),
    )
    with pytest.raises(FileSyncError, match="no file"):
        sync.receiver_message(req(2))
    send_file(sync, 3, b"FROM x")
    assert sync.content("sub/Dockerfile") == b"FROM x"


def test_symlink_followed_inside_the_root() -> None:
    sync = sync_of(
        [
            stat("Dockerfile", MODE_LINK, link="build/Dockerfile.real"),
            stat("build", MODE_DIR),
            stat("build/Dockerfile.real"),
        ]
    )
    assert not state(sync, "complete")  # the link's target is needed
    send_file(sync, 2, b"FROM linked")
    assert state(sync, "complete")
    assert sync.content("Dockerfile") == b"FROM linked"


def test_absolute_and_relative_link_targets_resolve_from_the_root() -> None:
    sync = sync_of(
        [
            stat("d", MODE_DIR),
            stat("d/Dockerfile", MODE_LINK, link="../real"),
            stat("d/abs", MODE_LINK, link="/real"),
            stat("dirlink", MODE_LINK, link="d"),
            stat("real"),
        ],
        ("d/Dockerfile", "d/abs", "dirlink/Dockerfile"),
    )
    send_file(sync, 4, b"FROM real")
    for path in ("d/Dockerfile", "d/abs", "dirlink/Dockerfile", "real"):
        assert sync.content(path) == b"FROM real", path


def test_hard_link_reads_its_target() -> None:
    sync = sync_of([stat("A"), stat("Dockerfile", MODE_FILE, link="A")])
    out = Packet.FromString(DockerfileSync([], stamp=STAMP).sender_message(stat("A")))
    assert out.stat.modTime == STAMP
    with pytest.raises(FileSyncError):
        sync.receiver_message(req(1))  # the daemon links it, never requests it
    send_file(sync, 0, b"FROM hard")
    assert sync.content("Dockerfile") == b"FROM hard"


def test_hard_link_to_something_unlisted_is_refused() -> None:
    with pytest.raises(FileSyncError, match="hard link"):
        sync_of([stat("Dockerfile", MODE_FILE, link="B")])


def test_link_loop_is_refused() -> None:
    sync = sync_of(
        [stat("Dockerfile", MODE_LINK, link="a"), stat("a", MODE_LINK, link="Dockerfile")]
    )
    assert state(sync, "complete")  # nothing more can arrive that changes the answer
    with pytest.raises(FileSyncError, match="links"):
        sync.content("Dockerfile")


def test_link_escaping_the_root_is_refused() -> None:
    for target in ("../etc/Dockerfile", "/../x", "d/../../x"):
        sync = sync_of([stat("Dockerfile", MODE_LINK, link=target), stat("d", MODE_DIR)])
        with pytest.raises(FileSyncError):
            sync.content("Dockerfile")


def test_dotdot_after_a_link_is_refused_as_ambiguous() -> None:
    # The daemon's reader cleans "l/.." lexically; the kernel resolves l first.
    sync = sync_of(
        [
            stat("Dockerfile", MODE_LINK, link="l/../real"),
            stat("l", MODE_LINK, link="d/e"),
            stat("d", MODE_DIR),
            stat("d/e", MODE_DIR),
            stat("real"),
        ]
    )
    with pytest.raises(FileSyncError, match="after a link"):
        sync.content("Dockerfile")


def test_dotdot_after_a_missing_name_or_a_file_is_refused() -> None:
    for target in ("missing/../real", "real/../real", "real/"):
        sync = sync_of([stat("Dockerfile", MODE_LINK, link=target), stat("real")])
        with pytest.raises(FileSyncError):
            sync.content("Dockerfile")


def test_path_through_a_file_or_to_a_directory_reads_nothing() -> None:
    sync = sync_of([stat("Dockerfile", MODE_DIR), stat("f")], ("Dockerfile", "f/x"))
    assert sync.content("Dockerfile") is None
    assert sync.content("f/x") is None
    assert state(sync, "complete")


def test_device_or_fifo_dockerfile_is_refused() -> None:
    sync = sync_of([stat("Dockerfile", MODE_FIFO)])
    with pytest.raises(FileSyncError, match="special"):
        sync.content("Dockerfile")


def test_content_before_data_ends_is_refused() -> None:
    sync = sync_of([stat("Dockerfile")])
    sync.receiver_message(req(0))
    sync.sender_message(data(0, b"FROM"))
    with pytest.raises(FileSyncError, match="not arrived"):
        sync.content("Dockerfile")


def test_daemon_finishing_without_the_file_completes_but_reads_nothing() -> None:
    sync = sync_of([stat("Dockerfile")])
    sync.receiver_message(FIN)
    assert state(sync, "complete")
    with pytest.raises(FileSyncError):
        sync.content("Dockerfile")


def test_sender_error_text_is_kept() -> None:
    sync = DockerfileSync(["Dockerfile"], stamp=STAMP)
    sync.sender_message(
        Packet(type=Packet.PACKET_ERR, data=b"open Dockerfile: denied").SerializeToString()
    )
    assert sync.sender_error == "open Dockerfile: denied"


@pytest.mark.parametrize(
    "path",
    ["", "/Dockerfile", "../Dockerfile", "a/../b", "a//b", "./a", "a/", "a\\b", "..", ".", "a\x00"],
)
def test_unclean_paths_are_refused(path: str) -> None:
    with pytest.raises(FileSyncError, match="clean"):
        DockerfileSync([], stamp=STAMP).sender_message(stat(path))


def test_duplicate_path_is_refused() -> None:
    sync = DockerfileSync(["Dockerfile"], stamp=STAMP)
    sync.sender_message(stat("Dockerfile"))
    with pytest.raises(FileSyncError, match="twice"):
        sync.sender_message(stat("Dockerfile", MODE_LINK, link="x"))


def test_entry_before_its_directory_is_refused() -> None:
    with pytest.raises(FileSyncError, match="directory"):
        sync_of([stat("a/Dockerfile")])
    with pytest.raises(FileSyncError, match="directory"):
        sync_of([stat("a", MODE_LINK, link="b"), stat("b", MODE_DIR), stat("a/Dockerfile")])


def test_reserved_metadata_name_is_refused() -> None:
    with pytest.raises(FileSyncError, match="reserves"):
        sync_of([stat(".fsutil-metadata")])


def test_second_list_is_refused() -> None:
    sync = sync_of([stat("Dockerfile")])
    with pytest.raises(FileSyncError, match="second file list"):
        sync.sender_message(stat("Zz"))
    with pytest.raises(FileSyncError, match="twice"):
        sync.sender_message(END)


def test_data_before_request_is_refused() -> None:
    sync = sync_of([stat("Dockerfile")])
    with pytest.raises(FileSyncError, match="not requested"):
        sync.sender_message(data(0, b"FROM evil"))


def test_data_after_end_is_refused() -> None:
    sync = sync_of([stat("Dockerfile")])
    send_file(sync, 0, b"FROM alpine")
    with pytest.raises(FileSyncError, match="after its end"):
        sync.sender_message(data(0, b"FROM evil"))
    with pytest.raises(FileSyncError, match="after its end"):
        sync.sender_message(data(0, b""))


def test_request_for_a_directory_or_unknown_id_or_twice_is_refused() -> None:
    sync = sync_of([stat("d", MODE_DIR), stat("Dockerfile")])
    for bad in (0, 2, 2**32 - 1):
        with pytest.raises(FileSyncError):
            sync.receiver_message(req(bad))
    sync.receiver_message(req(1))
    with pytest.raises(FileSyncError, match="twice"):
        sync.receiver_message(req(1))


def test_oversize_data_is_refused() -> None:
    sync = DockerfileSync(["Dockerfile"], stamp=STAMP, max_bytes=10)
    sync.sender_message(stat("Dockerfile"))
    sync.sender_message(stat("other"))
    sync.sender_message(END)
    sync.receiver_message(req(0))
    sync.receiver_message(req(1))
    sync.sender_message(data(1, b"123456"))
    with pytest.raises(FileSyncError, match="more than 10 bytes"):
        sync.sender_message(data(0, b"12345"))


def test_too_many_entries_are_refused() -> None:
    sync = DockerfileSync(["Dockerfile"], stamp=STAMP)
    for number in range(100_000):
        sync.sender_message(stat(f"f{number:06d}", MODE_DIR))
    with pytest.raises(FileSyncError, match="more than 100000"):
        sync.sender_message(stat("g"))


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff",
        b"\x12\x05\x0a\x03",
        Packet(type=Packet.PacketType.ValueType(9)).SerializeToString(),
        b"\x12\x03\x0a\x01\xff",
    ],
)
def test_garbage_packets_are_refused(payload: bytes) -> None:
    with pytest.raises(FileSyncError):
        DockerfileSync([], stamp=STAMP).sender_message(payload)
    with pytest.raises(FileSyncError):
        DockerfileSync([], stamp=STAMP).receiver_message(payload)


def test_packets_in_the_wrong_direction_are_refused() -> None:
    with pytest.raises(FileSyncError, match="only the daemon"):
        DockerfileSync([], stamp=STAMP).sender_message(req(0))
    with pytest.raises(FileSyncError, match="only the client"):
        DockerfileSync([], stamp=STAMP).receiver_message(stat("x"))


def test_unclean_dockerfile_path_argument_is_refused() -> None:
    with pytest.raises(FileSyncError):
        DockerfileSync(["../Dockerfile"], stamp=STAMP)
