"""`pullgate context install|uninstall|status`: the docker context for the shim.

Checked against the real docker CLI (it must list, inspect and use the context) and, with
DOCKER_HOST unset, a real `docker version` through a real agent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from agent.cli import context_cmd
from agent.cli.status_cmd import check_docker_target
from agent.platform.docker_context import (
    DEFAULT_HOST,
    STATE_FILE,
    ContextError,
    context_meta_dir,
    context_status,
    docker_endpoint,
    install_context,
    uninstall_context,
)
from agent.platform.upstream import find_upstream
from bench.realdocker import DockerEnv
from tests.agent_process import start_agent

DOCKER_CLI = "/usr/local/bin/docker"
LISTEN = Path("/run/pullgate-test/docker.sock")


def config(config_dir: Path) -> dict[str, object]:
    data = json.loads((config_dir / "config.json").read_text())
    assert isinstance(data, dict)
    return data


def cli(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not Path(DOCKER_CLI).exists():
        pytest.skip(f"{DOCKER_CLI} not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(config_dir)
    return subprocess.run(
        [DOCKER_CLI, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_install_writes_meta_where_the_cli_looks_and_selects_it(tmp_path: Path) -> None:
    change = install_context(tmp_path, LISTEN)
    assert change.changed and change.previous is None
    digest = hashlib.sha256(b"pullgate").hexdigest()
    meta = json.loads((tmp_path / "contexts" / "meta" / digest / "meta.json").read_text())
    assert meta["Name"] == "pullgate"
    assert meta["Endpoints"]["docker"] == {"Host": f"unix://{LISTEN}", "SkipTLSVerify": False}
    assert config(tmp_path)["currentContext"] == "pullgate"
    status = context_status(tmp_path, LISTEN, {})
    assert status.through_shim and status.current == "pullgate" and status.installed


def test_install_keeps_every_other_config_key(tmp_path: Path) -> None:
    original = {"auths": {"registry.example": {"auth": "eA=="}}, "credsStore": "pass", "x": [1]}
    (tmp_path / "config.json").write_text(json.dumps(original))
    install_context(tmp_path, LISTEN)
    assert config(tmp_path) == {**original, "currentContext": "pullgate"}
    uninstall_context(tmp_path)
    assert config(tmp_path) == original


def test_uninstall_restores_the_previous_context_and_both_are_idempotent(tmp_path: Path) -> None:
    created = cli(tmp_path, "context", "create", "work", "--docker", "host=unix:///tmp/work.sock")
    assert created.returncode == 0, created.stderr
    assert cli(tmp_path, "context", "use", "work").returncode == 0
    first = install_context(tmp_path, LISTEN)
    second = install_context(tmp_path, LISTEN)
    assert first.previous == second.previous == "work"
    assert not second.changed, "a second install changes nothing"
    assert uninstall_context(tmp_path).previous == "work"
    assert config(tmp_path)["currentContext"] == "work"
    assert not context_meta_dir(tmp_path, "pullgate").exists()
    assert not (tmp_path / STATE_FILE).exists()
    assert not uninstall_context(tmp_path).changed, "a second uninstall changes nothing"
    assert config(tmp_path)["currentContext"] == "work"


def test_uninstall_without_a_previous_context_removes_current_context(tmp_path: Path) -> None:
    install_context(tmp_path, LISTEN)
    uninstall_context(tmp_path)
    assert "currentContext" not in config(tmp_path)


def test_uninstall_leaves_a_context_the_user_chose_since(tmp_path: Path) -> None:
    install_context(tmp_path, LISTEN)
    assert (
        cli(tmp_path, "context", "create", "mine", "--docker", "host=unix:///m.sock").returncode
        == 0
    )
    assert cli(tmp_path, "context", "use", "mine").returncode == 0
    uninstall_context(tmp_path)
    assert config(tmp_path)["currentContext"] == "mine"
    assert not context_meta_dir(tmp_path, "pullgate").exists()


def test_status_says_docker_host_overrides_the_context(tmp_path: Path) -> None:
    install_context(tmp_path, LISTEN)
    status = context_status(tmp_path, LISTEN, {"DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert status.source == "DOCKER_HOST" and not status.through_shim
    assert "BYPASSES" in status.describe(LISTEN)


def add_context(config_dir: Path, name: str, host: str) -> None:
    meta = context_meta_dir(config_dir, name)
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}})
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"DOCKER_HOST": "unix:///h.sock", "DOCKER_CONTEXT": "env"},
            ("unix:///h.sock", "DOCKER_HOST", None),
        ),
        ({"DOCKER_CONTEXT": "env"}, ("unix:///env.sock", "DOCKER_CONTEXT", "env")),
        ({}, ("unix:///file.sock", "config.json", "file")),
        ({"DOCKER_CONTEXT": "default"}, (DEFAULT_HOST, "default", "default")),
        ({"DOCKER_CONTEXT": "gone"}, (None, "DOCKER_CONTEXT", "gone")),
    ],
)
def test_docker_endpoint_follows_the_cli_precedence(
    tmp_path: Path, env: dict[str, str], expected: tuple[str | None, str, str | None]
) -> None:
    add_context(tmp_path, "env", "unix:///env.sock")
    add_context(tmp_path, "file", "unix:///file.sock")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "file"}))
    endpoint = docker_endpoint(tmp_path, env)
    assert (endpoint.url, endpoint.source, endpoint.context) == expected


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"DOCKER_CONTEXT": "env"},
        {"DOCKER_HOST": "unix:///h.sock", "DOCKER_CONTEXT": "env"},
        {"DOCKER_CONTEXT": "default"},
    ],
)
def test_docker_endpoint_agrees_with_the_real_cli(tmp_path: Path, env: dict[str, str]) -> None:
    add_context(tmp_path, "env", "unix:///env.sock")
    add_context(tmp_path, "file", "unix:///file.sock")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "file"}))
    if not Path(DOCKER_CLI).exists():
        pytest.skip(f"{DOCKER_CLI} not installed")
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    cli_env.update(env, DOCKER_CONFIG=str(tmp_path))
    host = subprocess.run(
        [DOCKER_CLI, "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert docker_endpoint(tmp_path, env).url == host


def test_docker_endpoint_without_a_config_is_the_default_socket(tmp_path: Path) -> None:
    endpoint = docker_endpoint(tmp_path / "none", {})
    assert (endpoint.url, endpoint.source) == (DEFAULT_HOST, "default")
    assert endpoint.describe(tmp_path) == "the default socket"


def test_an_unreadable_config_only_matters_when_the_cli_would_read_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[" * 40_000)
    with pytest.raises(ContextError):
        docker_endpoint(tmp_path, {})
    assert docker_endpoint(tmp_path, {"DOCKER_HOST": "unix:///h.sock"}).url == "unix:///h.sock"
    assert docker_endpoint(tmp_path, {"DOCKER_CONTEXT": "x"}).url is None


def test_find_upstream_doctor_and_context_status_agree(tmp_path: Path) -> None:
    """The three users of the CLI's endpoint see the same context."""
    daemon = tmp_path / "d.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(daemon))
        add_context(tmp_path, "work", f"unix://{daemon}")
        (tmp_path / "config.json").write_text(json.dumps({"currentContext": "work"}))
        env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "work"}
        choice = find_upstream(LISTEN, env, tmp_path, 1000)
        assert (choice.path, choice.source) == (daemon, "docker context 'work'")
        status = context_status(tmp_path, daemon, env)
        assert (status.current, status.source, status.through_shim) == (
            "work",
            "DOCKER_CONTEXT",
            True,
        )
        check = check_docker_target(daemon, env, tmp_path)
        assert check.result == "OK"
        assert "docker context 'work' (DOCKER_CONTEXT)" in check.detail


def test_real_cli_lists_inspects_and_uses_the_context(tmp_path: Path) -> None:
    install_context(tmp_path, LISTEN)
    listed = cli(
        tmp_path, "context", "ls", "--format", "{{.Name}} {{.Current}} {{.DockerEndpoint}}"
    )
    assert listed.returncode == 0, listed.stderr
    assert f"pullgate true unix://{LISTEN}" in listed.stdout.splitlines()
    inspected = cli(tmp_path, "context", "inspect", "pullgate")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)[0]["Endpoints"]["docker"]["Host"] == f"unix://{LISTEN}"
    shown = cli(tmp_path, "context", "show")
    assert shown.stdout.strip() == "pullgate"


def test_cli_commands_install_report_and_uninstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    parser = argparse.ArgumentParser(prog="pullgate")
    context_cmd.register(parser.add_subparsers(dest="command"))

    def main(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        result: int = args.run(args)
        return result

    assert main("context", "status", "--listen", str(LISTEN)) == 1
    assert main("context", "install", "--listen", str(LISTEN)) == 0
    assert main("context", "status", "--listen", str(LISTEN), "--json") == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["through_shim"] is True and status["current"] == "pullgate"
    assert main("context", "uninstall") == 0
    assert main("context", "uninstall") == 0
    assert "not installed" in capsys.readouterr().out


def test_docker_version_goes_through_a_real_agent_after_install(
    docker_env: DockerEnv, tmp_path: Path
) -> None:
    agent = start_agent(tmp_path, docker_env.socket_path, None)
    try:
        config_dir = tmp_path / "docker-config"
        install_context(config_dir, agent.socket_path)
        mark = agent.mark()
        result = cli(config_dir, "version", "--format", "{{.Server.Version}}")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()
        # Non-image traffic is not a decision; what proves the path is that the agent is
        # the only thing the CLI could reach: stop it and the same command fails.
        assert agent.running() and agent.mark() >= mark
    finally:
        agent.stop()
    failed = cli(config_dir, "version", "--format", "{{.Server.Version}}")
    assert failed.returncode != 0, "with the agent stopped the context must not reach dockerd"
