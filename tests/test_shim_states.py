"""The shim's connection states: one transition table, and every move goes through it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from agent.daemon import shim
from agent.daemon.bus import DecisionSink
from agent.daemon.shim import MOVES, ClientConnection, IllegalMoveError, Shim, ShimConfig, State


def _connection() -> ClientConnection:
    config = ShimConfig(listen=Path("unused.sock"), upstream=Path("unused-upstream.sock"))
    return ClientConnection(
        Shim(config, policy=lambda: pytest.fail("no policy"), sink=DecisionSink())
    )


def _state(conn: ClientConnection) -> State:
    return conn.state  # read afresh: each move changes it


def test_a_connection_starts_reading_a_head() -> None:
    assert _connection().state is State.HEAD


def test_an_illegal_move_is_refused_with_the_state_names() -> None:
    conn = _connection()
    with pytest.raises(IllegalMoveError, match="HEAD cannot go to SPLICE"):
        conn._move(State.SPLICE)  # a raw stream only after the daemon answered
    assert _state(conn) is State.HEAD
    conn._move(State.CLOSED)
    with pytest.raises(IllegalMoveError, match="CLOSED cannot go to HEAD"):
        conn._move(State.HEAD)
    assert _state(conn) is State.CLOSED


def test_legal_moves_are_made() -> None:
    conn = _connection()
    # a pass-through request without a body, one with a body, an archive, a refusal
    for state in (
        State.WAIT,
        State.HEAD,
        State.BODY,
        State.WAIT,
        State.HEAD,
        State.TAR,
        State.DECIDING,
        State.DRAIN,
        State.CLOSED,
        State.CLOSED,  # the transport reports a close the shim made
    ):
        conn._move(state)
        assert _state(conn) is state


def test_the_table_names_every_state_and_only_states() -> None:
    assert set(MOVES) == set(State)
    for targets in MOVES.values():
        assert targets <= set(State)


def test_every_state_is_reachable_from_the_start() -> None:
    seen = {State.HEAD}
    todo = [State.HEAD]
    while todo:
        for state in MOVES[todo.pop()]:
            if state not in seen:
                seen.add(state)
                todo.append(state)
    assert seen == set(State)


def test_every_state_can_close_and_closed_is_final() -> None:
    for state in State:
        assert State.CLOSED in MOVES[state], state
    assert MOVES[State.CLOSED] == {State.CLOSED}


def test_every_state_assignment_goes_through_move() -> None:
    """Only ``__init__`` (the start state) and ``_move`` assign ``self.state``."""
    tree = ast.parse(Path(inspect.getfile(shim)).read_text())
    assigning: list[str] = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and leaf.attr == "state"
                        and isinstance(leaf.value, ast.Name)
                        and leaf.value.id == "self"
                    ):
                        assigning.append(func.name)
    assert sorted(assigning) == ["__init__", "_move"]


def test_docs_show_the_table() -> None:
    """docs/shim.md lists the moves of each state, plus refusals and closing for all."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "shim.md"
    listed: dict[State, set[State]] = {}
    for line in docs.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        name = cells[0].split("`")[1]
        if name not in State.__members__:
            continue
        words = cells[2].replace(",", " ").split()
        listed[State[name]] = {State[w.strip("`")] for w in words if w.startswith("`")}
    assert set(listed) == set(State)
    in_progress = list(State)[:6]  # "a request in any of the first six states"
    assert in_progress[-1] is State.WAIT
    for state in State:
        expected = listed[state] | {State.CLOSED}
        if state in in_progress:
            expected |= {State.DRAIN, State.DECIDING}
        assert MOVES[state] == expected, state
