"""The pure BuildKit core: gRPC framing, following a file sync, a build's inputs and
what they decide. Bytes and values only: messages are built with the generated classes."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.inspection.buildkit import grpc
from agent.core.inspection.buildkit.decide import dockerfile, from_sync, merge, upfront
from agent.core.inspection.buildkit.filesync import DockerfileSync, FileSyncError
from agent.core.inspection.buildkit.inputs import (
    BuildInputs,
    from_build_query,
    from_solve_request,
)
from agent.core.inspection.buildkit.protos.control_pb2 import (
    CacheOptions,
    CacheOptionsEntry,
    SolveRequest,
)
from agent.core.inspection.buildkit.protos.fsutil_types_pb2 import Packet, Stat
from agent.core.inspection.buildkit.protos.llb_pb2 import Definition, Op, Platform, SourceOp
from agent.core.inspection.request import Inspection, InspectionError
from agent.core.inspection.routes import parse_query
from tests.policy_builders import policy

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


def test_status_trailers_cut_a_huge_message_short() -> None:
    """A client's megabyte of error text, quoted back, must not cost seconds of HPACK
    encoding on the agent's loop (the stuffing red-team test hung the agent so)."""
    message = "pullgate: cannot read the Dockerfile: the client gave up: " + "x" * (1 << 20)
    encoded = dict(grpc.status_trailers(grpc.PERMISSION_DENIED, message))["grpc-message"]
    text = unquote(encoded)
    assert len(text) == grpc.MAX_STATUS_MESSAGE
    assert text.startswith("pullgate: cannot read the Dockerfile") and text.endswith("\u2026")


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
    assert not state(sync, "complete")  # the target's data is the link's
    send_file(sync, 0, b"FROM hard")
    assert state(sync, "complete")
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


# --- build inputs ---------------------------------------------------------------------


def solve(
    attrs: dict[str, str] | None = None,
    frontend: str = "dockerfile.v0",
    session: str = "sess1",
    *,
    definition: Definition | None = None,
    cache: CacheOptions | None = None,
    inputs: dict[str, Definition] | None = None,
) -> BuildInputs:
    request = SolveRequest(
        Ref="ref1",
        Session=session,
        Frontend=frontend,
        FrontendAttrs=attrs or {},
        Definition=definition,
        Cache=cache,
        FrontendInputs=inputs,
    )
    return from_solve_request(request.SerializeToString())


def llb(*identifiers: str, extra: bytes = b"") -> Definition:
    definition = Definition()
    ops = getattr(definition, "def")
    for identifier in identifiers:
        ops.append(Op(source=SourceOp(identifier=identifier)).SerializeToString())
    ops.append(b"\x0a\x05hello")  # the terminal op: inputs only
    if extra:
        ops.append(extra)
    return definition


def test_build_query_of_the_cli() -> None:
    query = {
        "version": "2",
        "dockerfile": "sub/Dockerfile",
        "target": "final",
        "buildargs": '{"BASE": "alpine", "UNSET": null}',
        "cachefrom": '["acme/cache:1", "x,y"]',
        "session": "abc",
        "remote": "client-session",
    }
    inputs = from_build_query(query)
    assert inputs.via == "POST /build" and inputs.frontend == "dockerfile.v0"
    assert (inputs.session, inputs.dockerfile_session, inputs.dockerfile_local) == (
        "abc",
        "abc",
        "dockerfile",
    )
    assert inputs.filename == "sub/Dockerfile"
    assert inputs.paths == ("sub/Dockerfile", "sub/dockerfile")
    assert dict(inputs.build_args) == {"BASE": "alpine"}
    assert inputs.target == "final"
    assert inputs.cache_imports == ("acme/cache:1", "x", "y")  # the frontend splits on ','
    assert inputs.unreadable is None


def test_build_query_defaults_and_query_objects() -> None:
    inputs = from_build_query(parse_query("version=2&session=s&remote=client-session"))
    assert (inputs.filename, inputs.paths) == ("Dockerfile", ("Dockerfile", "dockerfile"))
    assert (
        from_build_query({"dockerfile": ".", "remote": "client-session"}).filename == "Dockerfile"
    )
    assert from_build_query({"dockerfile": "Dockerfile.dev", "remote": "client-session"}).paths == (
        "Dockerfile.dev",
    )
    with pytest.raises(InspectionError, match="more than once"):
        from_build_query(parse_query("remote=client-session&session=a&session=b"))


def test_build_query_remote_or_uploaded_context_is_unreadable() -> None:
    remote = from_build_query({"remote": "https://github.com/x/y.git", "session": "s"})
    assert remote.unreadable is not None and "remote context" in remote.unreadable
    uploaded = from_build_query({"session": "s"})
    assert uploaded.unreadable is not None and "uploaded" in uploaded.unreadable


def test_build_query_bad_json_is_refused() -> None:
    for query in (
        {"buildargs": "{", "remote": "client-session"},
        {"buildargs": '{"A": 1}', "remote": "client-session"},
        {"buildargs": '{"A": "1", "A": "2"}', "remote": "client-session"},
        {"cachefrom": '"x"', "remote": "client-session"},
    ):
        with pytest.raises(InspectionError, match="pullgate: "):
            from_build_query(query)


@pytest.mark.parametrize("name", ["../Dockerfile", "a/../../D", "a\\b", "/", ""])
def test_dockerfile_path_leaving_its_local_is_refused(name: str) -> None:
    with pytest.raises(InspectionError):
        solve({"filename": name})


def test_dockerfile_path_is_cleaned_from_the_root() -> None:
    assert solve({"filename": "/a/./b/../Dockerfile"}).paths == ("a/Dockerfile", "a/dockerfile")


def test_solve_request_of_buildx() -> None:
    inputs = solve(
        {
            "filename": "Dockerfile",
            "target": "t",
            "build-arg:A": "1",
            "context:base": "docker-image://someuser/base:1",
            "context:files::linux/amd64": "local:files",
            "local-sessionid:dockerfile": "sess2",
            "cache-imports": '[{"Type": "registry", "Attrs": {"ref": "acme/c:1"}}]',
            "cache-from": "acme/c:2",
        },
        cache=CacheOptions(
            ImportRefsDeprecated=["acme/c:3"],
            Imports=[CacheOptionsEntry(Type="registry", Attrs={"ref": "acme/c:4"})],
        ),
    )
    assert inputs.via == "Control/Solve" and inputs.ref == "ref1"
    assert (inputs.session, inputs.dockerfile_session) == ("sess1", "sess2")
    assert dict(inputs.build_args) == {"A": "1"} and inputs.target == "t"
    assert dict(inputs.named_contexts) == {
        "base": "docker-image://someuser/base:1",
        "files::linux/amd64": "local:files",
    }
    assert set(inputs.cache_imports) == {"acme/c:1", "acme/c:2", "acme/c:3", "acme/c:4"}
    assert inputs.unreadable is None


def test_dockerfilekey_names_the_local_and_its_session() -> None:
    inputs = solve({"dockerfilekey": "df2", "local-sessionid:df2": "other"})
    assert (inputs.dockerfile_local, inputs.dockerfile_session) == ("df2", "other")


def test_undecodable_solve_request_is_refused() -> None:
    with pytest.raises(InspectionError, match=r"pullgate: .*does not decode"):
        from_solve_request(b"\xff\xff\xff")


@pytest.mark.parametrize(
    ("attrs", "frontend", "why"),
    [
        ({"context": "https://github.com/x/y.git"}, "dockerfile.v0", "remote context"),
        ({"contextkey": "ctx", "ctx": "git@github.com:x/y"}, "dockerfile.v0", "remote context"),
        ({}, "custom.v0", "frontend custom.v0"),
        ({"source": "someuser/frontend:1"}, "gateway.v0", "frontend image"),
        (
            {"source": "docker/dockerfile:1", "context:docker/dockerfile:1": "local:fe"},
            "gateway.v0",
            "replaced",
        ),
        (
            {"source": "docker/dockerfile", "context:docker/dockerfile": "docker-image://evil/fe"},
            "gateway.v0",
            "replaced",
        ),
        ({"context:base": "oci-layout://store@sha256:" + "a" * 64}, "dockerfile.v0", "named"),
        ({"context:base": "input:x"}, "dockerfile.v0", "named"),
        ({"cache-imports": '[{"Type": "local", "Attrs": {"src": "/tmp"}}]'}, "", "cache"),
    ],
)
def test_what_cannot_be_read_is_unreadable(attrs: dict[str, str], frontend: str, why: str) -> None:
    inputs = solve(attrs, frontend)
    assert inputs.unreadable is not None and why in inputs.unreadable


def test_known_gateway_frontends() -> None:
    for source in (
        "docker/dockerfile:1",
        "docker.io/docker/dockerfile-upstream:master",
        "docker/dockerfile@sha256:" + "b" * 64,
    ):
        inputs = solve({"source": source}, "gateway.v0")
        assert inputs.unreadable is None and inputs.frontend_image == source


def test_frontend_inputs_are_unreadable() -> None:
    inputs = solve(inputs={"context": llb("local://context")})
    assert inputs.unreadable is not None and "frontend inputs" in inputs.unreadable


def test_raw_llb_images() -> None:
    inputs = solve(
        frontend="",
        definition=llb(
            "docker-image://docker.io/library/alpine:3.20", "local://context", "git://x/y"
        ),
    )
    assert inputs.llb_images == ("docker.io/library/alpine:3.20",)
    assert inputs.unreadable is None


def test_raw_llb_with_a_nested_build_or_an_unknown_source_is_unreadable() -> None:
    nested = solve(frontend="", definition=llb(extra=b"\x2a\x00"))  # field 5: BuildOp
    assert nested.unreadable is not None and "nested build" in nested.unreadable
    layout = solve(frontend="", definition=llb("oci-layout://x@sha256:" + "c" * 64))
    assert layout.unreadable is not None and "oci-layout" in layout.unreadable


def test_raw_llb_garbage_or_with_a_frontend_is_refused() -> None:
    definition = Definition()
    getattr(definition, "def").append(b"\xff\xff")
    with pytest.raises(InspectionError, match="does not decode"):
        solve(frontend="", definition=definition)
    with pytest.raises(InspectionError, match="both"):
        solve(frontend="dockerfile.v0", definition=llb("docker-image://alpine"))


def test_bad_cache_imports_json_is_refused() -> None:
    for raw in ("{", "[null]", '[{"Type": 1}]', '[{"Type": "registry", "Attrs": {"ref": 1}}]'):
        with pytest.raises(InspectionError):
            solve({"cache-imports": raw})


def test_cache_imports_json_keys_match_in_any_case() -> None:
    inputs = solve({"cache-imports": '[{"type": "registry", "attrs": {"ref": "acme/c"}}]'})
    assert inputs.cache_imports == ("acme/c",)


# --- decisions ------------------------------------------------------------------------


def details(inspection: Inspection) -> set[tuple[str, str | None]]:
    return {(w.reference.canonical, w.detail) for w in inspection.wants}


def test_upfront_decides_images_named_outside_the_dockerfile() -> None:
    inputs = solve(
        {
            "source": "docker/dockerfile:1.7",
            "context:base": "docker-image://someuser/base:1",
            "context:empty": "docker-image://scratch",
            "context:src": "local:src",
            "cache-from": "acme/cache",
        },
        "gateway.v0",
    )
    result = upfront(inputs, policy())
    assert result.setting is None
    assert details(result) == {
        ("docker.io/acme/cache:latest", "--cache-from"),
        ("docker.io/someuser/base:1", "--build-context base"),
        ("docker.io/docker/dockerfile:1.7", "frontend docker/dockerfile:1.7"),
    }
    assert {lookup.name for lookup in result.lookups} >= {"someuser/base:1"}


def test_upfront_unreadable_follows_builds() -> None:
    inputs = solve({"context": "https://example.com/ctx.tar"})
    denied = upfront(inputs, policy(builds="deny"))
    assert denied.setting is not None and not denied.setting.allowed
    assert denied.setting.setting == "builds"
    assert "remote context https://example.com/ctx.tar cannot be inspected" in denied.setting.reason
    allowed = upfront(inputs, policy(builds="allow"))
    assert allowed.setting is not None and allowed.setting.allowed


def test_upfront_raw_llb_images() -> None:
    inputs = solve(frontend="", definition=llb("docker-image://someuser/tool"))
    assert details(upfront(inputs, policy())) == {("docker.io/someuser/tool:latest", "LLB source")}


DOCKERFILE = b"""\
ARG BASE=alpine:3.20
FROM ${BASE} AS build
RUN --mount=type=bind,from=someuser/mounted,target=/m true
FROM someuser/tool AS final
COPY --from=build /x /x
COPY --from=someuser/copied /y /y
"""


def test_dockerfile_images_with_line_details() -> None:
    inputs = solve()
    result = dockerfile(inputs, "Dockerfile", DOCKERFILE, policy())
    assert result.setting is None
    assert details(result) == {
        ("docker.io/library/alpine:3.20", "Dockerfile line 2: FROM ${BASE} AS build"),
        (
            "docker.io/someuser/mounted:latest",
            "Dockerfile line 3: RUN --mount=type=bind,from=someuser/mounted,target=/m true",
        ),
        ("docker.io/someuser/tool:latest", "Dockerfile line 4: FROM someuser/tool AS final"),
        (
            "docker.io/someuser/copied:latest",
            "Dockerfile line 6: COPY --from=someuser/copied /y /y",
        ),
    }
    assert {lookup.name for lookup in result.lookups} >= {"alpine:3.20", "someuser/tool"}


def test_dockerfile_build_args_override_and_target_decides_its_stages() -> None:
    inputs = solve({"build-arg:BASE": "someuser/base", "target": "build"})
    images = {w.input for w in dockerfile(inputs, "Dockerfile", DOCKERFILE, policy()).wants}
    assert images == {"someuser/base", "someuser/mounted"}  # the final stage is not built


def test_dockerfile_readings_are_united() -> None:
    # Without heredoc support the body's FROM line is an instruction (and CMD ends it).
    text = b"FROM alpine\nRUN <<CMD\nFROM someuser/hidden\nCMD\n"
    result = dockerfile(solve(), "Dockerfile", text, policy())
    assert {w.input for w in result.wants} == {"alpine", "someuser/hidden"}
    assert result.setting is None


def test_dockerfile_a_reading_cannot_parse_follows_builds() -> None:
    text = b"FROM alpine\nRUN <<EOF\nFROM someuser/hidden\nEOF\n"
    result = dockerfile(solve(), "Dockerfile", text, policy(builds="deny"))
    assert {w.input for w in result.wants} == {"alpine"}
    assert result.setting is not None and not result.setting.allowed
    assert "without heredoc support" in result.setting.reason
    modern = dockerfile(solve(), "Dockerfile", text, policy(), readings=[(True, True, "")])
    assert modern.setting is None


def test_dockerfile_syntax_frontend() -> None:
    text = b"# syntax=docker/dockerfile:1.7\nFROM alpine\n"
    result = dockerfile(solve(), "Dockerfile", text, policy())
    assert result.setting is None
    assert (
        "docker.io/docker/dockerfile:1.7",
        "Dockerfile line 1: # syntax=docker/dockerfile:1.7",
    ) in (details(result))


def test_dockerfile_unknown_syntax_frontend_follows_builds() -> None:
    text = b"# syntax=someuser/frontend\nFROM alpine\n"
    result = dockerfile(solve(), "Dockerfile", text, policy(builds="deny"))
    assert "docker.io/someuser/frontend:latest" in {w.reference.canonical for w in result.wants}
    assert result.setting is not None and not result.setting.allowed
    assert "someuser/frontend" in result.setting.reason


def test_dockerfile_syntax_build_arg_and_its_replacement_by_a_named_context() -> None:
    inputs = solve({"build-arg:BUILDKIT_SYNTAX": "docker/dockerfile:1"})
    result = dockerfile(inputs, "Dockerfile", b"FROM alpine\n", policy())
    assert ("docker.io/docker/dockerfile:1", "--build-arg BUILDKIT_SYNTAX=docker/dockerfile:1") in (
        details(result)
    )
    assert result.setting is None
    replaced = solve({"context:docker/dockerfile:1": "docker-image://evil/frontend"})
    text = b"# syntax=docker/dockerfile:1\nFROM alpine\n"
    result = dockerfile(replaced, "Dockerfile", text, policy())
    assert result.setting is not None and "replaced" in result.setting.reason


def test_named_context_over_a_from_decides_both() -> None:
    inputs = solve({"context:someuser/tool": "docker-image://acme/tool"})
    images = {w.input for w in dockerfile(inputs, "Dockerfile", DOCKERFILE, policy()).wants}
    images |= {w.input for w in upfront(inputs, policy()).wants}
    assert {"someuser/tool", "acme/tool"} <= images


def test_unparseable_dockerfile_follows_builds_not_an_exception() -> None:
    for text in (b"RUN true\n", b"FROM ${UNSET}\n", b"\xff\xfe", b"FROM Bad:Name\n"):
        result = dockerfile(solve(), "Dockerfile", text, policy(builds="deny"))
        assert result.setting is not None and not result.setting.allowed, text
        assert "Dockerfile" in result.setting.reason
        allowed = dockerfile(solve(), "Dockerfile", text, policy(builds="allow"))
        assert allowed.setting is not None and allowed.setting.allowed


def test_from_sync_decides_every_candidate_present() -> None:
    sync = DockerfileSync(["Dockerfile", "dockerfile"], stamp=STAMP)
    for entry in (stat("Dockerfile"), stat("dockerfile")):
        sync.sender_message(entry)
    sync.sender_message(END)
    send_file(sync, 0, b"FROM alpine\n")
    send_file(sync, 1, b"FROM someuser/lower\n")
    assert state(sync, "complete")
    images = {w.input for w in from_sync(solve(), sync, policy()).wants}
    assert images == {"alpine", "someuser/lower"}


def test_from_sync_without_a_dockerfile_decides_nothing_more() -> None:
    sync = sync_of([stat("other")], ("Dockerfile", "dockerfile"))
    assert from_sync(solve(), sync, policy()) == Inspection()


def test_from_sync_unreadable_file_follows_builds() -> None:
    sync = sync_of([stat("Dockerfile", MODE_LINK, link="../x")], ("Dockerfile", "dockerfile"))
    result = from_sync(solve(), sync, policy(builds="deny"))
    assert result.setting is not None and not result.setting.allowed


def test_merge_keeps_a_denying_setting() -> None:
    allow = upfront(solve({"context": "git://x"}), policy(builds="allow"))
    deny = upfront(solve({"context": "git://x"}), policy(builds="deny"))
    merged = merge([allow, deny, allow])
    assert merged.setting is not None and not merged.setting.allowed


# --- only the stages BuildKit builds for the target are decided ---------------------------


def stage_images(
    text: str, attrs: dict[str, str] | None = None, *, all_stages: bool = False
) -> set[str]:
    result = dockerfile(solve(attrs), "Dockerfile", text.encode(), policy(), all_stages=all_stages)
    assert result.setting is None
    images = {w.input for w in result.wants}
    # Local images are looked up for what is decided, and only that.
    assert {lookup.name for lookup in result.lookups} == images
    return images


TARGETS = """\
FROM someuser/tool AS never
RUN true
FROM alpine AS wanted
RUN true
FROM someuser/last
"""


def test_target_leaves_out_a_stage_it_does_not_reach() -> None:
    assert stage_images(TARGETS, {"target": "wanted"}) == {"alpine"}


def test_target_is_matched_in_any_case() -> None:
    assert stage_images(TARGETS, {"target": "WanTed"}) == {"alpine"}


def test_no_target_builds_the_last_stage() -> None:
    assert stage_images(TARGETS) == {"someuser/last"}


def test_unknown_target_or_subrequest_or_all_stages_decides_every_stage() -> None:
    every = {"someuser/tool", "alpine", "someuser/last"}
    assert stage_images(TARGETS, {"target": "nope"}) == every
    assert stage_images(TARGETS, {"requestid": "frontend.lint"}) == every
    assert stage_images(TARGETS, {"target": "wanted"}, all_stages=True) == every


def test_syntax_frontend_is_decided_whatever_the_target() -> None:
    text = "# syntax=docker/dockerfile:1.7\n" + TARGETS
    assert stage_images(text, {"target": "wanted"}) == {"docker/dockerfile:1.7", "alpine"}


@pytest.mark.parametrize(
    "use",
    [
        "COPY --from=tool /x /x",
        "COPY --from=TOOL /x /x",
        "COPY --from=0 /x /x",
        "RUN --mount=type=bind,from=tool,target=/t true",
    ],
)
def test_a_stage_the_target_reads_from_is_decided(use: str) -> None:
    text = f"FROM someuser/tool AS tool\nFROM alpine AS unused\nFROM alpine\n{use}\n"
    assert stage_images(text) == {"someuser/tool", "alpine"}
    assert stage_images(text.replace(use, "RUN true")) == {"alpine"}


def test_a_stage_chain_is_followed_through_from_and_copy() -> None:
    text = """\
FROM someuser/tool AS tool
RUN --mount=type=bind,from=someuser/mounted,target=/m true
FROM tool AS middle
FROM alpine AS mid2
COPY --from=middle /x /x
FROM alpine
COPY --from=mid2 /y /y
"""
    assert stage_images(text) == {"someuser/tool", "someuser/mounted", "alpine"}
    assert stage_images(text, {"target": "tool"}) == {"someuser/tool", "someuser/mounted"}


def test_onbuild_trigger_of_a_base_stage_reaches_the_stage_it_names() -> None:
    text = """\
FROM someuser/tool AS tool
FROM alpine AS base
ONBUILD COPY --from=tool /x /x
FROM base
"""
    # The trigger's name is decided as an image too (a later build based on the image
    # runs it), whatever the target.
    assert stage_images(text) == {"someuser/tool", "alpine", "tool"}
    # The trigger runs only in a stage built on its stage: building base alone skips it.
    assert stage_images(text, {"target": "base"}) == {"alpine", "tool"}


def test_onbuild_triggers_down_the_from_chain_and_by_index_count_too() -> None:
    text = """\
FROM someuser/tool AS tool
FROM someuser/other AS other
FROM alpine AS base
ONBUILD RUN --mount=from=other,target=/o true
ONBUILD COPY --from=0 /x /x
FROM base AS middle
FROM middle
"""
    assert stage_images(text) == {"someuser/tool", "someuser/other", "alpine", "other"}
    assert stage_images(text, {"target": "base"}) == {"alpine", "other"}


def test_onbuild_trigger_index_out_of_range_counts_every_stage() -> None:
    text = """\
FROM someuser/tool AS tool
FROM alpine AS base
ONBUILD COPY --from=7 /x /x
FROM base
"""
    assert stage_images(text) == {"someuser/tool", "alpine"}


# --- gateway calls (client.Build: buildx), source policies, unknown fields -------------

from agent.core.inspection.buildkit.decide import (  # noqa: E402
    RESOLVE_CONFIG_DETAIL,
    resolve_inspection,
)
from agent.core.inspection.buildkit.inputs import (  # noqa: E402
    ResolveTarget,
    from_gateway_solve,
    image_of_resolve_config,
    image_of_resolve_source_meta,
)
from agent.core.inspection.buildkit.protos import gateway_pb2  # noqa: E402
from agent.core.inspection.request import EventAction  # noqa: E402


def raw_field(number: int, value: bytes | int) -> bytes:
    """One encoded top-level field: length-delimited bytes, or a varint."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


#: A sourcepolicy.Policy converting docker-image://alpine into another image (version 1,
#: one rule; its content does not matter to Pullgate, only that it is there).
POLICY = raw_field(1, 1) + raw_field(2, raw_field(1, 2) + raw_field(2, b"docker-image://alpine"))


def forwarding_parent() -> BuildInputs:
    """buildx's Control/Solve: no frontend, no LLB, its attributes as the gateway's."""
    request = SolveRequest(Ref="build1", Session="sess1", FrontendAttrs={"build-arg:A": "1"})
    return from_solve_request(request.SerializeToString())


def gateway_solve(
    parent: BuildInputs | None = None, extra: bytes = b"", **fields: object
) -> BuildInputs:
    request = gateway_pb2.SolveRequest(**fields)  # type: ignore[arg-type]
    return from_gateway_solve(request.SerializeToString() + extra, parent or forwarding_parent())


def test_control_solve_without_frontend_or_llb_is_gateway_forwarding() -> None:
    parent = forwarding_parent()
    assert parent.gateway_forwarding and parent.ref == "build1" and parent.frontend == ""
    assert not solve({}).gateway_forwarding
    assert not solve(frontend="", definition=llb("docker-image://alpine")).gateway_forwarding


def test_gateway_solve_of_the_dockerfile_frontend_with_a_build_arg() -> None:
    inputs = gateway_solve(
        Frontend="dockerfile.v0",
        FrontendOpt={
            "filename": "sub/Dockerfile",
            "target": "final",
            "build-arg:BASE": "someuser/base",
            "context:ctx": "docker-image://someuser/ctx:1",
        },
        ImportCacheRefsDeprecated=["acme/c:0"],
        CacheImports=[CacheOptionsEntry(Type="registry", Attrs={"ref": "acme/c:1"})],
    )
    assert inputs.via == "LLBBridge/Solve" and not inputs.gateway_forwarding
    assert (inputs.session, inputs.dockerfile_session, inputs.ref) == ("sess1", "sess1", "build1")
    assert inputs.frontend == "dockerfile.v0" and inputs.paths == (
        "sub/Dockerfile",
        "sub/dockerfile",
    )
    assert dict(inputs.build_args) == {"BASE": "someuser/base"} and inputs.target == "final"
    assert inputs.cache_imports == ("acme/c:0", "acme/c:1")
    assert inputs.unreadable is None
    assert details(upfront(inputs, policy())) == {
        ("docker.io/acme/c:0", "--cache-from"),
        ("docker.io/acme/c:1", "--cache-from"),
        ("docker.io/someuser/ctx:1", "--build-context ctx"),
    }
    syntax = "ARG BASE=alpine\nFROM $BASE\n"
    result = dockerfile(inputs, "sub/Dockerfile", syntax.encode(), policy())
    assert {w.input for w in result.wants} == {"someuser/base"}


def test_gateway_solve_reads_llb_frontends_and_inputs_as_a_control_solve() -> None:
    raw = gateway_solve(Definition=llb("docker-image://alpine:3.20", "local://context"))
    assert raw.llb_images == ("alpine:3.20",) and raw.unreadable is None
    nested = gateway_solve(Definition=llb(extra=b"\x2a\x00"))
    assert nested.unreadable is not None and "nested build" in nested.unreadable
    fed = gateway_solve(Frontend="dockerfile.v0", FrontendInputs={"context": llb("local://x")})
    assert fed.unreadable is not None and "frontend inputs" in fed.unreadable
    custom = gateway_solve(Frontend="gateway.v0", FrontendOpt={"source": "someuser/fe"})
    assert custom.unreadable is not None and "frontend image" in custom.unreadable
    known = gateway_solve(Frontend="gateway.v0", FrontendOpt={"source": "docker/dockerfile:1"})
    assert known.unreadable is None and known.frontend_image == "docker/dockerfile:1"
    local = gateway_solve(CacheImports=[CacheOptionsEntry(Type="local", Attrs={"src": "/c"})])
    assert local.unreadable is not None and "cache" in local.unreadable
    with pytest.raises(InspectionError, match="both"):
        gateway_solve(Frontend="dockerfile.v0", Definition=llb("docker-image://alpine"))
    with pytest.raises(InspectionError, match="does not decode"):
        from_gateway_solve(b"\xff\xff\xff", forwarding_parent())


def test_gateway_solve_harmless_fields_are_readable() -> None:
    extra = b"".join(
        [raw_field(5, 1), raw_field(6, 1), raw_field(10, 1), raw_field(11, b"{}"), raw_field(14, 1)]
    )
    assert gateway_solve(extra=extra, Frontend="dockerfile.v0").unreadable is None


def solve_bytes(extra: bytes, **fields: object) -> BuildInputs:
    request = SolveRequest(Ref="r", Session="s", Frontend="dockerfile.v0", **fields)  # type: ignore[arg-type]
    return from_solve_request(request.SerializeToString() + extra)


def test_control_solve_source_policy_is_unreadable() -> None:
    for extra in (raw_field(12, POLICY), raw_field(15, b"policy-session")):
        inputs = solve_bytes(extra)
        assert inputs.unreadable is not None and "source policy" in inputs.unreadable, extra
        setting = upfront(inputs, policy(builds="deny")).setting
        assert setting is not None and not setting.allowed and setting.setting == "builds"
    # Present but empty: an empty policy converts nothing, an empty session is none.
    assert solve_bytes(raw_field(12, b"") + raw_field(15, b"")).unreadable is None
    # Before what else makes the build unreadable: the first reason is the one shown.
    both = solve_bytes(raw_field(12, POLICY), FrontendInputs={"x": llb("local://x")})
    assert both.unreadable is not None and "source policy" in both.unreadable


def test_gateway_solve_source_policies_are_unreadable() -> None:
    inputs = gateway_solve(extra=raw_field(15, POLICY), Frontend="dockerfile.v0")
    assert inputs.unreadable is not None and "source policy (field 15)" in inputs.unreadable
    assert gateway_solve(extra=raw_field(15, b""), Frontend="dockerfile.v0").unreadable is None


@pytest.mark.parametrize(
    "extra",
    [raw_field(18, 1), raw_field(99, b"x"), raw_field(2047, 0), b"\x95\x01\x00\x00\x00\x00"],
)
def test_control_solve_unknown_field_is_unreadable(extra: bytes) -> None:
    inputs = solve_bytes(extra)
    assert inputs.unreadable is not None
    assert "a build request field Pullgate does not know (" in inputs.unreadable


@pytest.mark.parametrize("number", [7, 8, 9, 16])
def test_gateway_solve_unknown_field_is_unreadable(number: int) -> None:
    inputs = gateway_solve(extra=raw_field(number, 1), Frontend="dockerfile.v0")
    assert inputs.unreadable == f"a build request field Pullgate does not know ({number})"


def test_control_solve_harmless_fields_are_readable() -> None:
    extra = b"".join(
        [
            raw_field(3, b"image"),  # ExporterDeprecated
            raw_field(4, raw_field(1, b"k") + raw_field(2, b"v")),  # ExporterAttrsDeprecated
            raw_field(9, b"network.host"),  # Entitlements
            raw_field(11, 1),  # Internal
            raw_field(13, raw_field(1, b"image")),  # Exporters
            raw_field(14, 1),  # EnableSessionExporter
            raw_field(16, 1),  # CompatibilityVersion
            raw_field(17, 1),  # ProxyNetwork
        ]
    )
    assert solve_bytes(extra).unreadable is None


def test_group_wire_type_is_refused() -> None:
    with pytest.raises(InspectionError, match="wire type"):
        solve_bytes(b"\xa3\x01\xa4\x01")  # field 20: an empty group


def resolve_config(extra: bytes = b"", **fields: object) -> ResolveTarget:
    request = gateway_pb2.ResolveImageConfigRequest(**fields)  # type: ignore[arg-type]
    return image_of_resolve_config(request.SerializeToString() + extra)


def test_resolve_image_config_names_its_image() -> None:
    assert resolve_config(Ref="someuser/tool:1", ResolveMode="default")[:2] == (
        "someuser/tool:1",
        None,
    )
    # Platform, LogName, SessionID and StoreID change nothing for a registry resolve.
    harmless = raw_field(2, raw_field(1, b"amd64")) + raw_field(4, b"x") + raw_field(6, b"s")
    assert resolve_config(harmless + raw_field(7, b"st"), Ref="alpine").image == "alpine"


def test_resolve_image_config_policy_unknown_field_or_oci_layout_is_unreadable() -> None:
    image, why, *_ = resolve_config(raw_field(8, POLICY), Ref="alpine")
    assert image is None and why is not None and "source policy" in why
    image, why, *_ = resolve_config(raw_field(9, 1), Ref="alpine")
    assert image is None and why == "an image resolve field Pullgate does not know (9)"
    image, why, *_ = resolve_config(Ref="alpine", ResolverType=1)
    assert image is None and why is not None and "OCI layout" in why
    assert resolve_config(Ref="alpine", ResolverType=7).unreadable is not None
    assert resolve_config(raw_field(8, b""), Ref="alpine")[:2] == ("alpine", None)


def test_resolve_image_config_garbage_or_bad_reference_is_refused() -> None:
    with pytest.raises(InspectionError, match="does not decode"):
        image_of_resolve_config(b"\xff\xff")
    for ref in ("", "Bad/Name", "a b"):
        with pytest.raises(InspectionError, match="image to resolve"):
            resolve_config(Ref=ref)


def resolve_source(identifier: str, extra: bytes = b"") -> ResolveTarget:
    request = gateway_pb2.ResolveSourceMetaRequest(Source=SourceOp(identifier=identifier))
    return image_of_resolve_source_meta(request.SerializeToString() + extra)


def test_resolve_source_meta_of_an_image_or_of_files() -> None:
    assert resolve_source("docker-image://docker.io/someuser/tool:1")[:2] == (
        "docker.io/someuser/tool:1",
        None,
    )
    for identifier in (
        "git://github.com/x/y.git#main",
        "https://example.com/file.tar",
        "http://example.com/f",
        "local://context",
    ):
        assert resolve_source(identifier)[:2] == (None, None), identifier


def test_resolve_source_meta_unknown_source_policy_or_field_is_unreadable() -> None:
    for identifier in ("oci-layout://store@sha256:" + "a" * 64, "alpine", "future://x"):
        image, why, *_ = resolve_source(identifier)
        assert image is None and why is not None and identifier in why
    image, why, *_ = resolve_source("docker-image://alpine", raw_field(8, POLICY))
    assert image is None and why is not None and "source policy" in why
    image, why, *_ = resolve_source("git://x/y", raw_field(8, POLICY))
    assert why is not None  # a policy may turn a git source into an image too
    assert resolve_source("docker-image://alpine", raw_field(12, 1)).unreadable == (
        "a source resolve field Pullgate does not know (12)"
    )
    harmless = raw_field(3, b"log") + raw_field(4, b"pull") + raw_field(6, raw_field(1, 1))
    assert resolve_source("docker-image://alpine", harmless)[:2] == ("alpine", None)
    with pytest.raises(InspectionError, match="image to resolve"):
        resolve_source("docker-image://Bad/Name")


def test_resolve_inspection_decides_the_image_as_a_build_pull() -> None:
    result = resolve_inspection("someuser/tool:1", policy(), detail=RESOLVE_CONFIG_DETAIL)
    assert details(result) == {("docker.io/someuser/tool:1", "image metadata (ResolveImageConfig)")}
    assert [w.action for w in result.wants] == [EventAction.BUILD]
    assert [lookup.name for lookup in result.lookups] == ["someuser/tool:1"]
    assert result.setting is None
    assert resolve_inspection(None, policy()) == Inspection()
    image, why, *_ = resolve_config(raw_field(8, POLICY), Ref="alpine")
    deny = resolve_inspection(image, policy(builds="deny"), unreadable=why)
    assert deny.setting is not None and not deny.setting.allowed and not deny.wants
    allow = resolve_inspection(image, policy(builds="allow"), unreadable=why)
    assert allow.setting is not None and allow.setting.allowed


# --- red-team closures: unknown attributes, the 0.8 copy helper -------------------------

from agent.core.inspection.buildkit.inputs import DEFAULT_COPY_IMAGE  # noqa: E402


def _attrs_solve(attrs: dict[str, str]) -> bytes:
    return SolveRequest(
        Ref="r", Session="s", Frontend="dockerfile.v0", FrontendAttrs=attrs
    ).SerializeToString()


def test_an_unknown_frontend_attribute_makes_the_build_unreadable() -> None:
    inputs = from_solve_request(_attrs_solve({"gateway-devel": "x", "filename": "Dockerfile"}))
    assert inputs.unreadable is not None and "'gateway-devel'" in inputs.unreadable
    known = {
        "filename": "Dockerfile",
        "target": "t",
        "build-arg:X": "1",
        "label:a": "b",
        "attest:provenance": "mode=min",
        "platform": "linux/amd64",
        "no-cache": "",
        "local-sessionid:dockerfile": "s",
    }
    assert from_solve_request(_attrs_solve(known)).unreadable is None
    result = upfront(inputs, policy(builds="deny"))
    assert result.setting is not None and not result.setting.allowed


def test_the_copy_helper_image_is_decided() -> None:
    named = from_solve_request(_attrs_solve({"override-copy-image": "someuser/tool"}))
    assert "someuser/tool" in [w.input for w in upfront(named, policy()).wants]
    disabled = from_solve_request(_attrs_solve({"build-arg:BUILDKIT_DISABLE_FILEOP": "true"}))
    assert DEFAULT_COPY_IMAGE in [w.input for w in upfront(disabled, policy()).wants]
    # Go's ParseBool: "yes" is no boolean, so file ops stay on and no helper runs
    kept = from_solve_request(_attrs_solve({"build-arg:BUILDKIT_DISABLE_FILEOP": "yes"}))
    assert DEFAULT_COPY_IMAGE not in [w.input for w in upfront(kept, policy()).wants]


def test_a_resolve_for_a_platform_looks_its_image_up_for_that_platform() -> None:
    """The daemon answers a resolve from a local image only when it is of the platform
    asked (moby's builder-next ``platformMatches``), and fetches the variant otherwise;
    ``pull`` fetches it anyway. The lookup says so, for the shim to pull first."""
    arm = Platform(OS="linux", Architecture="arm", Variant="v7")
    target = resolve_config(Ref="acme/base:1", Platform=arm, ResolveMode="pull")
    assert (target.platform, target.force_pull) == ("linux/arm/v7", True)
    assert resolve_config(Ref="acme/base:1").platform == ""
    # An empty platform: BuildKit fills in the daemon's own.
    assert resolve_config(Ref="a", Platform=Platform(Architecture="arm64")).platform == ""
    source = gateway_pb2.ResolveSourceMetaRequest(
        Source=SourceOp(
            identifier="docker-image://acme/base:1", attrs={"image.resolvemode": "pull"}
        ),
        Platform=Platform(OS="linux", Architecture="arm64"),
    )
    meta = image_of_resolve_source_meta(source.SerializeToString())
    assert (meta.image, meta.platform, meta.force_pull) == ("acme/base:1", "linux/arm64", True)

    (lookup,) = resolve_inspection(
        target.image, policy(), platform=target.platform, force_pull=target.force_pull
    ).lookups
    assert (lookup.base, lookup.platform, lookup.force_pull, lookup.by_platform) == (
        True,
        "linux/arm/v7",
        True,
        True,
    )
    # No platform: a local image of any platform is the daemon's answer.
    (plain,) = resolve_inspection("acme/base:1", policy()).lookups
    assert plain.base and not plain.by_platform and not plain.force_pull
