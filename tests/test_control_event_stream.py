"""The control client's event stream (`agent.control.client.EventStream`, `SSEParser`):
the framing from bytes, then the stream against a socket that misbehaves and against a
real agent deciding a real pull request."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.control.client import ControlError, EventStream, ServerSentEvent, SSEParser
from tests.agent_process import shim_policy, start_agent, unix_request
from tests.fake_control import FakeControl, json_answer, sse_head

# --------------------------------------------------------------------------- framing


def test_parser_yields_named_events_and_ignores_comments() -> None:
    parser = SSEParser()
    events = parser.feed(b': hello\n\nevent: decision\ndata: {"a":1}\n\n: keep-alive\n\n')
    assert events == [ServerSentEvent("decision", '{"a":1}')]
    assert parser.comments == 2


def test_parser_joins_data_lines_and_defaults_the_name() -> None:
    assert SSEParser().feed(b"data: one\ndata:two\n\n") == [ServerSentEvent("message", "one\ntwo")]


def test_parser_handles_crlf_and_events_split_anywhere() -> None:
    raw = b'event: policy\r\ndata: {"x": 2}\r\n\r\nevent: notice\ndata: z\n\n'
    for cut in range(len(raw) + 1):
        parser = SSEParser()
        got = parser.feed(raw[:cut]) + parser.feed(raw[cut:])
        assert got == [ServerSentEvent("policy", '{"x": 2}'), ServerSentEvent("notice", "z")]


def test_parser_byte_by_byte() -> None:
    parser = SSEParser()
    got: list[ServerSentEvent] = []
    for byte in b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n":
        got += parser.feed(bytes([byte]))
    assert [e.event for e in got] == ["a", "b"]


def test_parser_drops_an_event_without_data_and_unknown_fields() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: lonely\n\nid: 7\nretry: 10\nbogus\ndata: ok\n\n") == [
        ServerSentEvent("message", "ok")
    ]


def test_an_oversized_line_drops_its_event_only() -> None:
    parser = SSEParser(max_line=100)
    raw = b"event: big\ndata: " + b"x" * 1000 + b"\n\nevent: small\ndata: fine\n\n"
    got: list[ServerSentEvent] = []
    for i in range(0, len(raw), 37):
        got += parser.feed(raw[i : i + 37])
    assert got == [ServerSentEvent("small", "fine")]
    assert parser.discarded == 1


def test_an_oversized_line_without_end_never_buffers_more_than_the_cap() -> None:
    parser = SSEParser(max_line=1000)
    for _ in range(1000):
        assert parser.feed(b"y" * 4096) == []
    assert len(parser._partial) <= 1000
    assert parser.feed(b"\n\ndata: after\n\n") == [ServerSentEvent("message", "after")]


def test_an_event_over_the_data_cap_is_dropped() -> None:
    parser = SSEParser(max_line=100, max_event=250)
    raw = b"".join(b"data: " + b"d" * 90 + b"\n" for _ in range(5)) + b"\n"
    assert parser.feed(raw + b"data: next\n\n") == [ServerSentEvent("message", "next")]
    assert parser.discarded == 1


def test_invalid_utf8_is_replaced_not_raised() -> None:
    (event,) = SSEParser().feed(b"event: \xff\ndata: \xfe\xfd\n\n")
    assert "\ufffd" in event.event and "\ufffd" in event.data


# --------------------------------------------------------------------------- a fake socket


@pytest.fixture
def short_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pgev-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_stream_reads_events_then_reports_the_end(short_dir: Path) -> None:
    def serve(conn: socket.socket) -> None:
        conn.sendall(sse_head() + b": hi\n\nevent: policy\ndata: {}\n\n")

    fake = FakeControl(short_dir / "c.sock", {("GET", "/v1/events"): serve})
    try:
        stream = EventStream(fake.path, timeout=5)
        stream.open()
        got: list[ServerSentEvent] = []
        with pytest.raises(ControlError, match="closed the event stream"):
            for event in stream.events():
                got.append(event)
        assert got == [ServerSentEvent("policy", "{}")]
    finally:
        fake.stop()


def test_stream_refused_says_the_agents_message(short_dir: Path) -> None:
    def busy(conn: socket.socket) -> None:
        conn.sendall(json_answer(503, {"message": "too many connections"}))

    fake = FakeControl(short_dir / "c.sock", {("GET", "/v1/events"): busy})
    try:
        with pytest.raises(ControlError, match=r"HTTP 503: too many connections"):
            EventStream(fake.path, timeout=5).open()
    finally:
        fake.stop()


def test_no_socket_is_a_control_error(short_dir: Path) -> None:
    with pytest.raises(ControlError, match="cannot reach the agent"):
        EventStream(short_dir / "none.sock", timeout=1).open()


def test_silence_past_the_timeout_is_a_control_error(short_dir: Path) -> None:
    release = threading.Event()

    def silent(conn: socket.socket) -> None:
        conn.sendall(sse_head())
        release.wait(10)

    fake = FakeControl(short_dir / "c.sock", {("GET", "/v1/events"): silent})
    try:
        stream = EventStream(fake.path, timeout=0.3)
        stream.open()
        with pytest.raises(ControlError, match="sent nothing"):
            list(stream.events())
    finally:
        release.set()
        fake.stop()


def test_close_from_another_thread_ends_a_blocked_read(short_dir: Path) -> None:
    release = threading.Event()

    def silent(conn: socket.socket) -> None:
        conn.sendall(sse_head())
        release.wait(10)

    fake = FakeControl(short_dir / "c.sock", {("GET", "/v1/events"): silent})
    try:
        stream = EventStream(fake.path, timeout=30)
        stream.open()
        threading.Timer(0.2, stream.close).start()
        started = time.monotonic()
        assert list(stream.events()) == []
        assert time.monotonic() - started < 5
    finally:
        release.set()
        fake.stop()


# --------------------------------------------------------------------------- a real agent


def test_a_real_agent_streams_the_decision_on_a_refused_pull(
    tmp_path: Path, short_dir: Path
) -> None:
    """The shim decides before it needs the daemon: an upstream that does not exist is
    enough for a real denial (and its event) of a community image."""
    control = short_dir / "control.sock"
    agent = start_agent(
        tmp_path,
        short_dir / "no-docker.sock",
        shim_policy(),
        ["--control", str(control)],
        expect_ping_ok=False,
    )
    try:
        stream = EventStream(control, timeout=20)
        stream.open()
        got: list[ServerSentEvent] = []

        def read() -> None:
            for event in stream.events():
                got.append(event)
                if event.event == "decision":
                    return

        reader = threading.Thread(target=read)
        reader.start()
        status, _, body = unix_request(
            agent.socket_path, "POST", "/images/create?fromImage=someuser/tool&tag=latest"
        )
        assert status == 403, body
        reader.join(5)
        stream.close()
        decision = json.loads(next(e.data for e in got if e.event == "decision"))
        assert decision["decision"] == "deny"
        assert decision["image"] == "docker.io/someuser/tool:latest"
        agent.stop()
    finally:
        agent.kill()
