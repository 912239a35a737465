"""`pullgate check` as a user runs it: a real process, its exit code, stdout and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.policy.envelope import PublicKey, sign_envelope
from agent.core.policy.trust import TrustSettings, evaluate_envelope
from agent.daemon.policy_cache import PolicyCache
from tests.policy_builders import document

REPO = Path(__file__).resolve().parent.parent


def pullgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=60,
        check=False,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    data = json.loads(proc.stdout)
    assert isinstance(data, list)
    return data


def write_policy(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document(**overrides)))
    return path


def test_json_for_official_image() -> None:
    proc = pullgate("check", "--json", "alpine")
    assert proc.returncode == 0, proc.stderr
    [item] = as_json(proc)
    assert item["input"] == "alpine"
    assert item["reference"] == {
        "domain": "docker.io",
        "path": "library/alpine",
        "tag": "latest",
        "digest": None,
        "canonical": "docker.io/library/alpine:latest",
        "familiar": "alpine:latest",
    }
    assert (item["category"], item["decision"]) == ("official", "allow")
    assert item["rule"] == "category:official"
    assert "built-in default policy" in item["reason"]


def test_community_image_is_denied_naming_category_and_policy() -> None:
    proc = pullgate("check", "someuser/tool")
    assert proc.returncode == 1
    assert "community" in proc.stdout
    assert "built-in default policy" in proc.stdout
    assert proc.stdout.startswith("policy: the built-in default policy")


def test_invalid_reference_exits_2_naming_the_bad_component() -> None:
    proc = pullgate("check", "docker/Docker")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "'Docker'" in lines[0] and "lowercase" in lines[0]


def test_invalid_input_in_json_has_error_and_exit_2() -> None:
    proc = pullgate("check", "--json", "alpine", "UPPER/..bad")
    assert proc.returncode == 2
    good, bad = as_json(proc)
    assert good["decision"] == "allow"
    assert bad["error"] and bad["decision"] is None and bad["reference"] is None


def test_misspelt_policy_field_exits_2_naming_the_path(tmp_path: Path) -> None:
    rules = [
        {"id": "a", "match": "nginx", "action": "allow"},
        {"id": "b", "match": "x", "acton": "deny"},
    ]
    path = write_policy(tmp_path, rules=rules)
    proc = pullgate("check", "--policy", str(path), "alpine")
    assert proc.returncode == 2
    assert "rules[1].acton" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read policy"),
        ("{not json", "not valid JSON"),
        ('{"payloadType": "application/vnd.pullgate.policy+json"}', "signed envelope"),
        ("[" * 40_000, "nested more than 32 levels"),
        ('{"schema": "pullgate.policy/v1", "serial": 1' + "0" * 5000 + "}", "not valid JSON"),
    ],
)
def test_unusable_policy_file_exits_2(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    proc = pullgate("check", "--policy", str(path), "alpine")
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_policy_file_with_rules_groups_and_identity(tmp_path: Path) -> None:
    rules = [{"id": "data", "match": "someuser/tool", "action": "allow", "groups": ["data"]}]
    path = write_policy(tmp_path, rules=rules)
    assert pullgate("check", "--policy", str(path), "someuser/tool").returncode == 1
    proc = pullgate(
        "check",
        "--policy",
        str(path),
        "--identity",
        "ann@acme.example",
        "--groups",
        "web,data",
        "--json",
        "someuser/tool",
    )
    assert proc.returncode == 0, proc.stdout
    [item] = as_json(proc)
    assert item["rule"] == "data"
    assert item["policy"] == {"name": 'org "acme" policy serial 7', "serial": 7}


def test_groups_without_identity_is_bad_input() -> None:
    proc = pullgate("check", "--groups", "a", "alpine")
    assert proc.returncode == 2 and "--identity" in proc.stderr


def test_no_images_is_bad_input() -> None:
    assert pullgate("check").returncode == 2


def test_monitor_mode_reports_would_deny_and_exits_0(tmp_path: Path) -> None:
    path = write_policy(tmp_path, mode="monitor")
    proc = pullgate("check", "--policy", str(path), "--json", "someuser/tool")
    assert proc.returncode == 0
    [item] = as_json(proc)
    assert item["decision"] == "would_deny"
    assert item["message"].startswith("pullgate: ")


def test_denied_json_carries_the_denial_message_and_alternative() -> None:
    proc = pullgate("check", "--json", "someuser/nginx")
    [item] = as_json(proc)
    assert item["decision"] == "deny"
    assert item["remediation"]["alternative"] == "nginx"
    assert item["message"].startswith("pullgate: pulling docker.io/someuser/nginx:latest")


DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=alpine:3.20
ARG TOOL
FROM ${BASE} AS build
COPY --from=someuser/tool:1.0 /bin/tool /bin/tool
FROM --platform=linux/amd64 ${TOOL:-nginx} AS final
COPY --from=build /bin/tool /bin/tool
"""


def test_dockerfile_images_are_listed_and_decided(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    proc = pullgate("check", "--json", "--dockerfile", str(tmp_path / "Dockerfile"))
    assert proc.returncode == 1, proc.stderr
    items = as_json(proc)
    found = {i["reference"]["canonical"]: i for i in items}
    assert set(found) == {
        "docker.io/docker/dockerfile:1",
        "docker.io/library/alpine:3.20",
        "docker.io/someuser/tool:1.0",
        "docker.io/library/nginx:latest",
    }
    tool = found["docker.io/someuser/tool:1.0"]
    assert tool["decision"] == "deny"
    assert tool["source"]["line"] == 5
    assert tool["source"]["dockerfile"].endswith("Dockerfile")


def test_dockerfile_build_args_change_the_images(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    proc = pullgate(
        "check",
        "--json",
        "--dockerfile",
        str(tmp_path / "Dockerfile"),
        "--build-arg",
        "BASE=someuser/base:2",
        "--build-arg",
        "TOOL=python:3.12",
    )
    canon = {i["reference"]["canonical"] for i in as_json(proc)}
    assert "docker.io/someuser/base:2" in canon and "docker.io/library/python:3.12" in canon


def test_unresolvable_dockerfile_exits_2_with_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\n")
    proc = pullgate("check", "--dockerfile", str(tmp_path / "Dockerfile"))
    assert proc.returncode == 2
    assert "line 2" in proc.stderr and "BASE" in proc.stderr


def test_missing_dockerfile_exits_2(tmp_path: Path) -> None:
    proc = pullgate("check", "--dockerfile", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "cannot read Dockerfile" in proc.stderr


# --- the agent's cache: --state-dir (issue 10) -----------------------------------------


def _org_config(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "org": "acme",
                "policy_url": "https://127.0.0.1:9/policy.dsse.json",
                "trusted_keys": [PublicKey.from_key(key).to_config()],
            }
        )
    )
    return config


def _cache(state: Path, key: Ed25519PrivateKey, **overrides: Any) -> None:
    payload = json.dumps(document(**overrides)).encode()
    accepted = evaluate_envelope(
        sign_envelope(payload, [key]),
        TrustSettings("acme", (PublicKey.from_key(key),)),
        None,
        datetime.now(UTC),
        source="test",
        allow_expired=True,
    )
    PolicyCache(state).save(accepted.envelope, accepted.high_water, None)


def test_check_reads_the_cache_of_the_agent_given_by_state_dir(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    config = _org_config(tmp_path, key)
    state = tmp_path / "state"
    _cache(state, key, serial=9, rules=[{"id": "t", "match": "someuser/tool", "action": "allow"}])
    proc = pullgate("check", "--config", str(config), "--state-dir", str(state), "someuser/tool")
    assert proc.returncode == 0, proc.stderr
    assert 'org "acme" policy serial 9' in proc.stdout
    assert "cached org policy" in proc.stdout
    assert not (state / "status.json").exists()  # check never writes the agent's status
    elsewhere = pullgate(
        "check", "--config", str(config), "--state-dir", str(tmp_path / "empty"), "someuser/tool"
    )
    assert elsewhere.returncode == 1
    assert "no verified org policy cached yet" in elsewhere.stdout


def test_check_judges_the_cache_with_the_high_water_state(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    config = _org_config(tmp_path, key)
    state = tmp_path / "state"
    _cache(state, key, serial=9)
    swapped = sign_envelope(json.dumps(document(serial=9, mode="monitor")).encode(), [key])
    (state / "policy.envelope").write_bytes(swapped)
    proc = pullgate("check", "--config", str(config), "--state-dir", str(state), "someuser/tool")
    assert "already accepted with different content" in proc.stdout, proc.stdout
    assert proc.returncode == 1  # the built-in default denies a community image


@pytest.mark.parametrize("name", ["policy.envelope", "policy-state.json"])
def test_check_with_a_hostile_cache_file_does_not_crash(tmp_path: Path, name: str) -> None:
    key = Ed25519PrivateKey.generate()
    config = _org_config(tmp_path, key)
    state = tmp_path / "state"
    state.mkdir()
    (state / name).write_bytes(b"[" * 40_000)
    proc = pullgate("check", "--config", str(config), "--state-dir", str(state), "alpine")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_with_a_non_canonical_trusted_key_is_one_line(tmp_path: Path) -> None:
    key = PublicKey.from_key(Ed25519PrivateKey.generate()).to_config()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelled = key[:-2] + alphabet[alphabet.index(key[-2]) | 0b11] + "="
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"org": "acme", "policy_url": "https://h/p", "trusted_keys": [respelled]})
    )
    proc = pullgate("check", "--config", str(config), "alpine")
    assert proc.returncode == 2
    assert "trusted_keys: item 0" in proc.stderr and "canonical" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("threshold", ["0", "-1"])
def test_check_refuses_a_threshold_below_one_instead_of_ignoring_it(
    tmp_path: Path, threshold: str
) -> None:
    key = Ed25519PrivateKey.generate()
    envelope = tmp_path / "policy.dsse.json"
    envelope.write_bytes(sign_envelope(json.dumps(document()).encode(), [key]))
    trusted = PublicKey.from_key(key).to_config()
    args = ["--policy", str(envelope), "--trusted-key", trusted, "alpine"]
    proc = pullgate("check", *args, "--threshold", threshold)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"--threshold must be at least 1, got {threshold}" in proc.stderr
    assert pullgate("check", *args, "--threshold", "1").returncode == 0
