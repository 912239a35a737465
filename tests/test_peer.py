"""The client process behind a socket: kernel credentials, psutil names, no secrets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from agent.core.redaction import redact_command_line, redact_details, redact_text
from agent.platform.peer import describe_peer, peer_credentials


def test_credentials_and_process_of_a_real_peer(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    script = (
        "import socket,time; s=socket.socket(socket.AF_UNIX); "
        f"s.connect({str(path)!r}); time.sleep(5)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, "--password", "hunter2"])
    try:
        conn, _ = server.accept()
        pid, uid, gid = peer_credentials(conn)
        assert (pid, uid, gid) == (child.pid, os.getuid(), os.getgid())
        info = describe_peer(pid, uid, gid)
        assert info.name and "python" in info.name
        assert info.executable and Path(info.executable).exists()
        assert "hunter2" not in " ".join(info.command_line)
        assert info.parents and info.parents[0].pid == os.getpid()
        conn.close()
    finally:
        child.kill()
        child.wait()
        server.close()


def test_a_gone_process_keeps_the_kernel_numbers() -> None:
    info = describe_peer(2**22 + 12345, 0, 0)
    assert (info.pid, info.uid, info.user, info.name) == (2**22 + 12345, 0, "root", None)


def test_secrets_in_command_lines_are_redacted() -> None:
    argv = [
        "docker",
        "login",
        "-u",
        "ann",
        "-p",
        "s3cret",
        "--password=x",
        "--token",
        "t",
        "https://ann:pw@registry.example/v2",
        "--password-stdin",
        "alpine",
    ]
    out = redact_command_line(argv)
    joined = " ".join(out)
    for secret in ("s3cret", "=x", " t ", "ann:pw"):
        assert secret not in joined
    assert out[-1] == "alpine" and out[-2] == "--password-stdin"


def test_one_redaction_rule_for_urls_details_and_command_lines() -> None:
    url = "https://ci:hunter2@policy.example/p.json"
    assert redact_text(url) == "https://<redacted>@policy.example/p.json"
    details = {"registry_auth": "x", "bypass_monitor": {"source": url}, "n": 1, "api_key": 2}
    assert redact_details(details) == {
        "registry_auth": "<redacted>",
        "bypass_monitor": {"source": "https://<redacted>@policy.example/p.json"},
        "n": 1,
        "api_key": "<redacted>",
    }
    assert redact_command_line(["git", "clone", url]) == ("git", "clone", redact_text(url))


def test_tokens_in_command_lines_and_text_are_redacted() -> None:
    """A client that hands the control API its ID token on its command line (curl -d) must
    not put that token in the audit log (red-team finding, issue 13)."""
    jwt_text = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    argv = [
        "curl",
        "-d",
        '{"id_token": "' + jwt_text + '"}',
        "-d",
        "grant_type=refresh_token&refresh_token=r3fr3sh&client_id=pullgate",
        "Authorization: Bearer " + jwt_text,
        "alpine:3.19",
    ]
    joined = " ".join(redact_command_line(argv))
    for secret in (jwt_text, "eyJzdWIiOiJhbGljZSJ9", "r3fr3sh"):
        assert secret not in joined
    assert "client_id=pullgate" in joined and joined.endswith("alpine:3.19")
    assert redact_text("pulled docker.io/library/alpine:3.19") == (
        "pulled docker.io/library/alpine:3.19"
    )
