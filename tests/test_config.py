"""Managed config: one key registry drives parsing, errors, docs and MDM profiles.

Every error must name the source and the key, because the person reading it is an IT
admin looking at a profile in an MDM console, not at our code.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import plistlib
import re
import subprocess
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import pytest

from agent.config import parse as parse_module
from agent.config import render as render_module
from agent.config import sources as sources_module
from agent.config.__main__ import main as config_main
from agent.config.check import check_local_files
from agent.config.keys import KEYS, AuditFailure, DesktopContext, Enforcement, ManagedConfig
from agent.config.parse import ConfigError, parse_config, parse_duration
from agent.config.render import (
    EXAMPLE_VALUES,
    encode_reg,
    render_example_json,
    render_markdown,
    render_mobileconfig,
    render_windows_reg,
)
from agent.config.sources import (
    REG_BINARY,
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_QWORD,
    REG_SZ,
    WINDOWS_POLICY_KEY,
    load_json_file,
    load_macos_preferences,
    load_managed_config,
    load_windows_policy,
)
from agent.core.durations import format_duration
from agent.core.policy.trust import StaleBehavior

ROOT = Path(__file__).resolve().parent.parent
KEY_A = "ed25519:" + base64.b64encode(bytes(range(32))).decode()
KEY_B = "ed25519:" + base64.b64encode(bytes(range(32, 64))).decode()
SOURCE = "config.json"


def _error(values: Mapping[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(values, SOURCE)
    return info.value


def _comparable(config: ManagedConfig) -> ManagedConfig:
    """Sources differ between readers; everything else must not."""
    return dataclasses.replace(config, source="-")


# ------------------------------------------------------------------ the registry


def test_registry_and_managed_config_fields_agree() -> None:
    names = [f.name for f in dataclasses.fields(ManagedConfig)]
    assert names[:-2] == [key.name for key in KEYS]
    assert names[-2:] == ["source", "set_keys"]


def test_dataclass_defaults_equal_the_documented_defaults() -> None:
    parsed = parse_config({}, "defaults")
    assert parsed == ManagedConfig()
    assert parsed.refresh_interval == timedelta(hours=1)
    assert parsed.offline_grace == timedelta(days=7)
    assert parsed.stale_behavior is StaleBehavior.ENFORCE_LAST
    assert parsed.audit_failure is AuditFailure.DENY
    assert parsed.policy_max_bytes == 1024 * 1024
    assert parsed.set_keys == frozenset()


def test_enum_choices_match_their_python_enums() -> None:
    by_name = {key.name: key for key in KEYS}
    assert [c for c, _ in by_name["stale_behavior"].choices] == [e.value for e in StaleBehavior]
    assert [c for c, _ in by_name["audit_failure"].choices] == [e.value for e in AuditFailure]


def test_every_documented_example_is_valid() -> None:
    for key in KEYS:
        example = json.loads(render_module._example_json(key))
        if key.name in ("policy_url", "key_threshold"):
            example |= {"org": "acme", "trusted_keys": [KEY_A, KEY_B]}
        if key.name in ("oidc_issuer", "oidc_client_id", "allowed_domains"):
            example |= {"oidc_issuer": "https://id.example", "oidc_client_id": "c"}
        assert key.name in parse_config(example, "example").set_keys


# ------------------------------------------------------------------ one good, one bad per key

GOOD: list[tuple[str, object, object]] = [
    ("org", "acme", "acme"),
    ("policy_url", "https://policy.example/p.json", "https://policy.example/p.json"),
    ("ca_bundle", "/etc/pullgate/ca.pem", Path("/etc/pullgate/ca.pem")),
    ("trusted_keys", [KEY_A, KEY_B], (KEY_A, KEY_B)),
    ("key_threshold", 2, 2),
    ("refresh_interval", "15m", timedelta(minutes=15)),
    ("offline_grace", 86400, timedelta(days=1)),
    ("stale_behavior", "deny-all", StaleBehavior.DENY_ALL),
    ("policy_max_bytes", 4096, 4096),
    ("fetch_timeout", "1500ms", timedelta(milliseconds=1500)),
    ("listen", "/run/pullgate/docker.sock", Path("/run/pullgate/docker.sock")),
    ("upstream", "unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
    ("enforcement", "takeover", Enforcement.TAKEOVER),
    ("desktop_users_dir", "/var/run/pullgate/users", Path("/var/run/pullgate/users")),
    ("desktop_context", "install", DesktopContext.INSTALL),
    (
        "desktop_executables",
        ["/opt/docker-desktop/bin/com.docker.backend"],
        ("/opt/docker-desktop/bin/com.docker.backend",),
    ),
    ("oidc_issuer", "https://id.acme.example/", "https://id.acme.example/"),
    ("oidc_client_id", "pullgate-cli", "pullgate-cli"),
    (
        "allowed_domains",
        ["acme.example", "corp.acme.example"],
        ("acme.example", "corp.acme.example"),
    ),
    (
        "oidc_scopes",
        ["openid", "email", "groups", "offline_access"],
        ("openid", "email", "groups", "offline_access"),
    ),
    ("oidc_groups_claim", "https://acme.example/groups", "https://acme.example/groups"),
    ("identity_max_age", "12h", timedelta(hours=12)),
    ("sign_in_methods", ["browser"], ("browser",)),
    ("audit_dir", "C:\\ProgramData\\Pullgate\\audit", Path("C:\\ProgramData\\Pullgate\\audit")),
    ("audit_failure", "allow", AuditFailure.ALLOW),
    ("audit_rotate_bytes", 8 * 1024 * 1024, 8 * 1024 * 1024),
    ("audit_keep_files", 3, 3),
    ("audit_native_log", False, False),
    ("help_url", "http://intranet/help?i={image}", "http://intranet/help?i={image}"),
]

BAD: list[tuple[str, object, str]] = [
    ("org", 42, "expected a string, got integer 42"),
    ("policy_url", "http://policy.example/p.json", "TLS only"),
    ("ca_bundle", "ca.pem", "expected an absolute path"),
    ("trusted_keys", KEY_A, "expected a list of strings"),
    ("key_threshold", "2", "expected an integer >= 1, got '2'"),
    ("refresh_interval", "15 minutes", "expected a duration"),
    ("offline_grace", True, "expected a duration"),
    ("stale_behavior", "enforce_last", "expected one of enforce-last | monitor | deny-all"),
    ("policy_max_bytes", 10, "expected an integer >= 1024, got 10"),
    ("fetch_timeout", "0s", "longer than zero"),
    ("listen", "", "must not be empty"),
    ("upstream", "tcp://127.0.0.1:2375", "expected a unix:// URL"),
    ("enforcement", "Takeover", "expected one of takeover | context | desktop"),
    ("desktop_users_dir", "users", "expected an absolute path"),
    ("desktop_context", "force", "expected one of enforce | install"),
    ("desktop_executables", ["/opt/docker-desktop/bin/"], "without '.', '..', '//'"),
    ("oidc_issuer", "http://id.acme.example", "expected a https:// URL"),
    ("oidc_client_id", " pullgate", "whitespace"),
    ("allowed_domains", ["alice@acme.example"], "not an address"),
    ("oidc_scopes", ["openid email"], "not an OAuth scope"),
    ("oidc_groups_claim", ["groups"], "expected a string, got list"),
    ("identity_max_age", "1m", "at least 5m"),
    ("sign_in_methods", ["password"], "expected one of device, browser"),
    ("audit_dir", ["/var/log"], "expected a string, got list"),
    ("audit_failure", "warn", "expected one of deny | allow"),
    ("audit_rotate_bytes", 1.5, "expected an integer >= 1048576, got 1.5"),
    ("audit_keep_files", 0, "expected an integer >= 1, got 0"),
    ("audit_native_log", "yes", "expected true or false, got 'yes'"),
    ("help_url", "ftp://files.example/help", "expected a https:// or http:// URL"),
]

# Values that need partner keys to be valid on their own (cross-key rules).
PARTNERS: dict[str, dict[str, object]] = {
    "policy_url": {"org": "acme", "trusted_keys": [KEY_A]},
    "key_threshold": {"trusted_keys": [KEY_A, KEY_B]},
    "oidc_issuer": {"oidc_client_id": "c"},
    "oidc_client_id": {"oidc_issuer": "https://id.example"},
    "allowed_domains": {"oidc_issuer": "https://id.example", "oidc_client_id": "c"},
}


def test_every_key_has_a_good_and_a_bad_case() -> None:
    names = [key.name for key in KEYS]
    assert [name for name, _, _ in GOOD] == names
    assert [name for name, _, _ in BAD] == names


@pytest.mark.parametrize(("name", "value", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_good_value_is_parsed_to_its_type(name: str, value: object, expected: object) -> None:
    parsed = parse_config({name: value, **PARTNERS.get(name, {})}, SOURCE)
    assert getattr(parsed, name) == expected
    assert name in parsed.set_keys


@pytest.mark.parametrize(("name", "value", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_error_names_source_key_and_why(name: str, value: object, fragment: str) -> None:
    err = _error({name: value, **PARTNERS.get(name, {})})
    assert (err.source, err.key) == (SOURCE, name)
    assert str(err).startswith(f"{SOURCE}: {name}: ")
    assert fragment in str(err)


def test_error_message_reads_source_key_expected_got() -> None:
    assert str(_error({"key_threshold": "2"})) == (
        "config.json: key_threshold: expected an integer >= 1, got '2'"
    )


def test_null_means_not_set() -> None:
    parsed = parse_config({"org": None, "refresh_interval": None}, SOURCE)
    assert parsed.org is None
    assert parsed.refresh_interval == timedelta(hours=1)
    assert parsed.set_keys == frozenset()


def test_list_item_errors_name_the_item() -> None:
    assert "item 1: 'acme.example' is listed twice" in str(
        _error({"allowed_domains": ["acme.example", "acme.example"], **PARTNERS["oidc_issuer"]})
    )
    assert "item 0: expected a string" in str(_error({"trusted_keys": [1]}))


# ------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("key_treshold", "key_threshold"),
        ("policyurl", "policy_url"),
        ("stale_behaviour", "stale_behavior"),
        ("Org", "org"),
    ],
)
def test_unknown_key_suggests_the_closest(name: str, suggestion: str) -> None:
    err = _error({name: "x"})
    assert err.key == name
    assert f"unknown key (did you mean {suggestion!r}?)" in str(err)


def test_unknown_key_without_a_close_match_has_no_guess() -> None:
    err = _error({"favourite_colour": "blue"})
    assert "unknown key;" in str(err)
    assert "did you mean" not in str(err)


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        (3600, timedelta(hours=1)),
    ],
)
def test_parse_duration(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("90", "add a unit to '90': '90s'"),
        ("", "expected a duration"),
        ("1.5h", "expected a duration"),
        ("-5m", "expected a duration"),
        ("5 m", "expected a duration"),
        ("5M", "expected a duration"),
        ("0d", "longer than zero"),
        (0, "longer than zero"),
        (-1, "longer than zero"),
        ("99999999999999999999w", "longer than the limit"),
        (10**12, "longer than the limit"),
    ],
)
def test_parse_duration_refuses(text: str | int, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for text in ("90s", "1h30m", "7d", "2w", "250ms", "1w1d1h1m1s"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)
    assert format_duration(timedelta(minutes=90)) == "1h30m"


# ------------------------------------------------------------------ trust settings


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("rsa:" + base64.b64encode(bytes(32)).decode(), "expected 'ed25519:<base64 public key>'"),
        (base64.b64encode(bytes(32)).decode(), "expected 'ed25519:<base64 public key>'"),
        ("ed25519:not base64!", "not valid base64"),
        ("ed25519:" + base64.b64encode(bytes(31)).decode(), "32 bytes, this is 31"),
        ("ed25519:" + base64.b64encode(bytes(64)).decode(), "32 bytes, this is 64"),
        ("ed25519:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "not valid base64"),
    ],
)
def test_trusted_key_format(key: str, fragment: str) -> None:
    err = _error({"trusted_keys": [KEY_A, key]})
    assert err.key == "trusted_keys"
    assert "item 1: " in str(err)
    assert fragment in str(err)


def test_the_same_key_listed_twice_cannot_meet_a_threshold_twice() -> None:
    err = _error({"trusted_keys": [KEY_A, KEY_A], "key_threshold": 2})
    assert err.key == "trusted_keys"
    assert "listed twice" in str(err)


def test_threshold_above_the_number_of_keys_is_refused() -> None:
    err = _error({"trusted_keys": [KEY_A, KEY_B], "key_threshold": 3})
    assert err.key == "key_threshold"
    assert "is 3 but only 2 trusted key(s)" in str(err)
    assert parse_config({"trusted_keys": [KEY_A, KEY_B], "key_threshold": 2}, SOURCE)


def test_plain_http_policy_url_is_refused() -> None:
    err = _error({"policy_url": "http://127.0.0.1:8443/p.json", **PARTNERS["policy_url"]})
    assert err.key == "policy_url"
    assert "expected a https:// URL" in str(err)


@pytest.mark.parametrize(
    ("values", "key", "fragment"),
    [
        ({"policy_url": "https://p.example/p", "org": "acme"}, "policy_url", "needs trusted_keys"),
        ({"policy_url": "https://p.example/p", "trusted_keys": [KEY_A]}, "policy_url", "needs org"),
        ({"oidc_issuer": "https://id.example"}, "oidc_issuer", "needs oidc_client_id"),
        ({"oidc_client_id": "c"}, "oidc_client_id", "needs oidc_issuer"),
        ({"allowed_domains": ["acme.example"]}, "allowed_domains", "without oidc_issuer"),
        ({"desktop_executables": []}, "desktop_executables", "no Docker Desktop could ever"),
        ({"oidc_scopes": ["email", "groups"]}, "oidc_scopes", "must include 'openid'"),
        ({"sign_in_methods": []}, "sign_in_methods", "nobody could sign in"),
        ({"oidc_groups_claim": " "}, "oidc_groups_claim", ""),
    ],
)
def test_settings_that_only_work_together(
    values: dict[str, object], key: str, fragment: str
) -> None:
    err = _error(values)
    assert err.key == key
    assert fragment in str(err)


@pytest.mark.parametrize(
    "path",
    [
        "com.docker.backend",
        "/opt/docker-desktop/../bin/com.docker.backend",
        "/opt/./docker-desktop/bin/com.docker.backend",
        "//opt/docker-desktop/bin/com.docker.backend",
        "/opt//docker-desktop/bin/com.docker.backend",
    ],
)
def test_desktop_executables_are_written_as_the_kernel_names_a_program(path: str) -> None:
    """Listed paths are compared as written with the one the kernel gives (no links, no
    dots): a path that can never match, or matches by another spelling, is refused."""
    err = _error({"desktop_executables": ["/opt/docker-desktop/bin/com.docker.backend", path]})
    assert err.key == "desktop_executables" and "item 1" in str(err)


def test_upstream_path_is_the_socket() -> None:
    parsed = parse_config({"upstream": "unix:///run/docker.sock"}, SOURCE)
    assert parsed.upstream_path == Path("/run/docker.sock")
    assert "unix:///absolute/path" in str(_error({"upstream": "unix://run/docker.sock"}))


# ------------------------------------------------------------------ JSON file


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"org": "acme", "refresh_interval": "5m"}))
    parsed = load_json_file(path)
    assert (parsed.org, parsed.refresh_interval, parsed.source) == (
        "acme",
        timedelta(minutes=5),
        str(path),
    )


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "org": "acme",\n  "key_threshold": 2,\n}\n')
    with pytest.raises(ConfigError) as info:
        load_json_file(path)
    assert info.value.key is None
    assert str(info.value).startswith(f"{path}: not valid JSON: ")
    assert "line 4" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"org": "a", "org": "b"}', "duplicate key 'org'"),
        ('{"refresh_interval": NaN}', "NaN is not valid JSON"),
        ('["org"]', "expected a JSON object of settings, got list"),
        ("", "not valid JSON"),
    ],
)
def test_json_file_is_read_strictly(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_json_file(path)


def test_json_file_error_for_a_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"stale_behavior": "panic"}')
    with pytest.raises(ConfigError) as info:
        load_json_file(path)
    assert str(info.value).startswith(f"{path}: stale_behavior: expected one of")


def test_nothing_configured_is_none_but_an_unreadable_source_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "config.json"
    assert load_managed_config(platform="linux", default_json_path=missing) is None
    with pytest.raises(ConfigError, match="cannot read"):
        load_managed_config(platform="linux", json_path=missing)  # --config must exist
    missing.mkdir()  # exists, but is not a readable file: never "unconfigured"
    with pytest.raises(ConfigError, match="cannot read"):
        load_managed_config(platform="linux", default_json_path=missing)


def test_config_flag_overrides_the_platform_source(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text('{"org": "acme"}')
    parsed = load_managed_config(
        json_path=path, platform="win32", windows_reader=lambda: {"org": ("other", REG_SZ)}
    )
    assert parsed is not None
    assert parsed.org == "acme"


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b" " * (sources_module.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_json_file(path)


# ------------------------------------------------------------------ macOS


def test_managed_preferences_plist(tmp_path: Path) -> None:
    path = tmp_path / "com.pullgate.agent.plist"
    path.write_bytes(
        plistlib.dumps(
            {
                "org": "acme",
                "audit_native_log": False,
                "allowed_domains": ["acme.example"],
                "oidc_issuer": "https://id.acme.example",
                "oidc_client_id": "c",
                "PayloadUUID": "bookkeeping is ignored",
            },
            fmt=plistlib.FMT_BINARY,
        )
    )
    parsed = load_macos_preferences(path)
    assert parsed.org == "acme"
    assert parsed.audit_native_log is False
    assert parsed.allowed_domains == ("acme.example",)
    assert parsed.source == str(path)


def test_mobileconfig_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "pullgate.mobileconfig"
    path.write_bytes(render_mobileconfig(EXAMPLE_VALUES))
    assert _comparable(load_macos_preferences(path)) == _comparable(
        parse_config(EXAMPLE_VALUES, "example")
    )


def test_mobileconfig_is_deterministic_and_not_removable_by_the_user() -> None:
    first = render_mobileconfig(EXAMPLE_VALUES, uuid_seed="s")
    assert first == render_mobileconfig(EXAMPLE_VALUES, uuid_seed="s")
    assert first != render_mobileconfig(EXAMPLE_VALUES, uuid_seed="t")
    profile = plistlib.loads(first)
    assert profile["PayloadRemovalDisallowed"] is True
    assert profile["PayloadScope"] == "System"
    (payload,) = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.pullgate.agent"
    assert profile["PayloadUUID"] != payload["PayloadUUID"]


def test_mobileconfig_reads_only_the_pullgate_payload(tmp_path: Path) -> None:
    profile = plistlib.loads(render_mobileconfig({"org": "acme"}))
    profile["PayloadContent"].insert(
        0, {"PayloadType": "com.apple.wifi.managed", "PayloadUUID": "x", "SSID_STR": "corp"}
    )
    path = tmp_path / "p.mobileconfig"
    path.write_bytes(plistlib.dumps(profile))
    assert load_macos_preferences(path).set_keys == {"org"}


def test_mobileconfig_with_custom_settings_mcx_payload(tmp_path: Path) -> None:
    profile = {
        "PayloadType": "Configuration",
        "PayloadContent": [
            {
                "PayloadType": "com.apple.ManagedClient.preferences",
                "PayloadContent": {
                    "com.pullgate.agent": {"Forced": [{"mcx_preference_settings": {"org": "acme"}}]}
                },
            }
        ],
    }
    path = tmp_path / "p.mobileconfig"
    path.write_bytes(plistlib.dumps(profile))
    assert load_macos_preferences(path).org == "acme"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ([{"PayloadType": "com.apple.wifi.managed"}], "no payload of type 'com.pullgate.agent'"),
        (
            [{"PayloadType": "com.pullgate.agent", "org": "a"}] * 2,
            "has 2 com.pullgate.agent payloads",
        ),
        ([{"PayloadType": "com.pullgate.agent", "orgs": "a"}], "did you mean 'org'"),
    ],
)
def test_mobileconfig_payload_problems(tmp_path: Path, content: object, fragment: str) -> None:
    path = tmp_path / "p.mobileconfig"
    path.write_bytes(plistlib.dumps({"PayloadType": "Configuration", "PayloadContent": content}))
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        load_macos_preferences(path)
    assert info.value.source == str(path)


def test_plist_value_of_a_foreign_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "com.pullgate.agent.plist"
    path.write_bytes(plistlib.dumps({"org": b"acme"}))
    with pytest.raises(ConfigError, match="org: expected a string, got bytes"):
        load_macos_preferences(path)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x30\x80\x06\x09signed", "signed profile"),
        (b"<plist><dict>", "not a valid property list"),
    ],
)
def test_unreadable_profiles(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / "p.mobileconfig"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=fragment):
        load_macos_preferences(path)


def test_macos_platform_reads_managed_preferences(tmp_path: Path) -> None:
    path = tmp_path / "com.pullgate.agent.plist"
    assert load_managed_config(platform="darwin", macos_path=path) is None
    path.write_bytes(plistlib.dumps({"org": "acme"}))
    parsed = load_managed_config(platform="darwin", macos_path=path)
    assert parsed is not None
    assert parsed.org == "acme"


# ------------------------------------------------------------------ Windows


def _reader(values: dict[str, tuple[object, int]]) -> sources_module.RegistryReader:
    return lambda: values


def test_windows_policy_values_by_registry_type() -> None:
    parsed = load_windows_policy(
        _reader(
            {
                "org": ("acme", REG_SZ),
                "policy_url": ("https://p.acme.example/p.json", REG_SZ),
                "trusted_keys": ([KEY_A, KEY_B], REG_MULTI_SZ),
                "key_threshold": (2, REG_DWORD),
                "policy_max_bytes": (2 * 1024 * 1024, REG_QWORD),
                "refresh_interval": ("10m", REG_SZ),
                "offline_grace": (3600, REG_DWORD),
                "audit_native_log": (0, REG_DWORD),
            }
        )
    )
    assert parsed is not None
    assert parsed.source == WINDOWS_POLICY_KEY
    assert parsed.trusted_keys == (KEY_A, KEY_B)
    assert parsed.key_threshold == 2
    assert parsed.policy_max_bytes == 2 * 1024 * 1024
    assert parsed.refresh_interval == timedelta(minutes=10)
    assert parsed.offline_grace == timedelta(hours=1)
    assert parsed.audit_native_log is False


def test_windows_value_names_match_case_insensitively() -> None:
    parsed = load_windows_policy(_reader({"Org": ("acme", REG_SZ)}))
    assert parsed is not None
    assert parsed.org == "acme"


def test_windows_expand_sz_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ProgramData", "C:\\ProgramData")
    parsed = load_windows_policy(
        _reader({"audit_dir": ("%ProgramData%\\Pullgate\\audit", REG_EXPAND_SZ)})
    )
    assert parsed is not None
    assert parsed.audit_dir == Path("C:\\ProgramData\\Pullgate\\audit")


@pytest.mark.parametrize(
    ("values", "key", "fragment"),
    [
        ({"audit_native_log": ("true", REG_SZ)}, "audit_native_log", "expected REG_DWORD 0 or 1"),
        ({"audit_native_log": (2, REG_DWORD)}, "audit_native_log", "expected REG_DWORD 0 or 1"),
        ({"key_threshold": ("1", REG_SZ)}, "key_threshold", "expected REG_DWORD, got REG_SZ"),
        ({"trusted_keys": (KEY_A, REG_SZ)}, "trusted_keys", "expected REG_MULTI_SZ, got REG_SZ"),
        ({"org": (b"acme", REG_BINARY)}, "org", "expected REG_SZ, got REG_BINARY"),
        ({"refresh_interval": ([], REG_MULTI_SZ)}, "refresh_interval", "REG_DWORD seconds"),
        ({"stale_behavior": ("later", REG_SZ)}, "stale_behavior", "expected one of"),
        ({"key_treshold": (1, REG_DWORD)}, "key_treshold", "did you mean 'key_threshold'"),
    ],
)
def test_windows_wrong_registry_type_is_refused(
    values: dict[str, tuple[object, int]], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_windows_policy(_reader(values))
    assert (info.value.source, info.value.key) == (WINDOWS_POLICY_KEY, key)
    assert fragment in str(info.value)


def test_windows_missing_policy_key_is_unconfigured() -> None:
    assert load_windows_policy(lambda: None) is None
    assert load_managed_config(platform="win32", windows_reader=lambda: None) is None


@pytest.mark.skipif(sys.platform == "win32", reason="the registry exists there")
def test_real_registry_reader_is_windows_only() -> None:
    with pytest.raises(ConfigError, match="only on Windows"):
        load_windows_policy()


def _parse_reg(text: str) -> dict[str, tuple[object, int]]:
    """Just enough of regedit's format to read back what render_windows_reg writes."""
    values: dict[str, tuple[object, int]] = {}
    for line in text.split("\r\n")[3:]:
        if not line:
            continue
        match = re.fullmatch(r'"([^"]+)"=(.*)', line)
        assert match, line
        name, data = match.groups()
        if data.startswith("dword:"):
            values[name] = (int(data[6:], 16), REG_DWORD)
        elif data.startswith("hex(7):"):
            raw = bytes(int(b, 16) for b in data[7:].split(",")).decode("utf-16-le")
            values[name] = (raw.rstrip("\0").split("\0"), REG_MULTI_SZ)
        else:
            values[name] = (json.loads(data), REG_SZ)
    return values


def test_reg_file_round_trip() -> None:
    text = render_windows_reg(EXAMPLE_VALUES | {"audit_native_log": False})
    assert text.startswith(
        "Windows Registry Editor Version 5.00\r\n\r\n"
        "[HKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Pullgate]\r\n"
    )
    parsed = load_windows_policy(_reader(_parse_reg(text)))
    assert parsed is not None
    expected = parse_config(EXAMPLE_VALUES | {"audit_native_log": False}, "example")
    assert _comparable(parsed) == _comparable(expected)


def test_renderers_refuse_settings_the_agent_would_refuse() -> None:
    for render in (render_mobileconfig, render_windows_reg):
        with pytest.raises(ConfigError, match="key_threshold"):
            render({"trusted_keys": [KEY_A], "key_threshold": 2})


# ------------------------------------------------------------------ generated files


def test_docs_config_md_is_generated_from_the_registry() -> None:
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), (
        "docs/config.md is out of date: python -m agent.config --markdown > docs/config.md"
    )


def test_docs_describe_every_key_and_choice() -> None:
    page = render_markdown()
    for key in KEYS:
        assert f"### `{key.name}`" in page
        for value, meaning in key.choices:
            assert f"| `{value}` | {meaning} |" in page


def test_packaged_mdm_examples_are_generated_and_valid() -> None:
    mdm = ROOT / "packaging" / "mdm"
    expected = parse_config(EXAMPLE_VALUES, "example")
    json_path = mdm / "config.example.json"
    assert json_path.read_text(encoding="utf-8") == render_example_json()
    assert _comparable(load_json_file(json_path)) == _comparable(expected)
    profile = mdm / "com.pullgate.agent.example.mobileconfig"
    assert profile.read_bytes() == render_mobileconfig(EXAMPLE_VALUES)
    assert _comparable(load_macos_preferences(profile)) == _comparable(expected)
    reg = mdm / "pullgate-example.reg"
    assert reg.read_bytes() == encode_reg(render_windows_reg(EXAMPLE_VALUES))
    assert reg.read_bytes().startswith(b"\xff\xfe")  # regedit's UTF-16LE with a BOM


def test_cli_check_reports_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"offline_grace": "7"}')
    assert config_main(["--check", str(path)]) == 2
    assert f"{path}: offline_grace: add a unit" in capsys.readouterr().err
    path.write_text('{"offline_grace": "7d"}')
    assert config_main(["--check", str(path)]) == 0
    assert "ok (1 keys set; files checked here)" in capsys.readouterr().out


def test_cli_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()


def _respelled(key: str) -> str:
    """The same key with its two spare bits set: decodes to the same bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = key.removeprefix("ed25519:")
    last = body[-2]  # before the one '=' of 32 bytes
    other = alphabet[alphabet.index(last) | 0b11]
    respelled = "ed25519:" + body[:-2] + other + "="
    assert respelled != key
    assert base64.b64decode(respelled[8:]) == base64.b64decode(body)
    return respelled


def test_a_trusted_key_in_non_canonical_base64_is_a_config_error() -> None:
    err = _error({"trusted_keys": [_respelled(KEY_A)]})
    assert err.key == "trusted_keys"
    assert "not the canonical base64" in str(err)
    assert KEY_A in str(err)  # the error shows the spelling to use


def test_one_key_in_two_spellings_is_refused() -> None:
    err = _error({"trusted_keys": [KEY_A, _respelled(KEY_A)], "key_threshold": 2})
    assert err.key == "trusted_keys"
    assert "item 1" in str(err)


def test_the_no_repeats_rule_compares_decoded_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # Were a second spelling ever accepted, it must still count as the same key.
    monkeypatch.setattr(parse_module, "_check_trusted_key", lambda text: None)
    monkeypatch.setattr(
        parse_module,
        "trusted_key_bytes",
        lambda text: base64.b64decode(text.removeprefix("ed25519:")),
    )
    err = _error({"trusted_keys": [KEY_A, _respelled(KEY_A)]})
    assert "the same key as item 0" in str(err)


def test_deeply_nested_json_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"[" * 40_000)
    with pytest.raises(ConfigError, match="nested more than"):
        load_json_file(path)


def test_a_missing_ca_bundle_fails_the_check_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"ca_bundle": str(tmp_path / "missing.pem")}))
    assert config_main(["--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: ca_bundle: cannot load {tmp_path / 'missing.pem'}" in err
    (tmp_path / "missing.pem").write_text("not a certificate\n")
    assert config_main(["--check", str(path)]) == 2
    assert "ca_bundle: cannot load" in capsys.readouterr().err


def test_check_local_files_accepts_a_real_ca_bundle(tmp_path: Path) -> None:
    from tests.policy_server import TLSMaterial

    tls = TLSMaterial.create(tmp_path / "tls")
    check_local_files(parse_config({"ca_bundle": str(tls.ca_cert)}, SOURCE))


def _agent(tmp_path: Path, config: Mapping[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "agent", "agent", "--config", str(path), "--no-watch"]
    argv += ["--state-dir", str(tmp_path / "state"), "--audit-dir", str(tmp_path / "audit")]
    argv += ["--listen", str(tmp_path / "d.sock"), "--upstream", "unix:///nonexistent.sock"]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_the_agent_refuses_to_start_with_a_missing_ca_bundle(tmp_path: Path) -> None:
    result = _agent(
        tmp_path,
        {
            "org": "acme",
            "policy_url": "https://127.0.0.1:9/p.json",
            "trusted_keys": [KEY_A],
            "ca_bundle": str(tmp_path / "missing.pem"),
        },
    )
    assert result.returncode == 2, result.stderr
    assert "ca_bundle: cannot load" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_agent_refuses_a_non_canonical_key_with_one_line(tmp_path: Path) -> None:
    result = _agent(
        tmp_path,
        {"org": "acme", "policy_url": "https://127.0.0.1:9/p", "trusted_keys": [_respelled(KEY_A)]},
    )
    assert result.returncode == 2, result.stderr
    assert "trusted_keys: item 0" in result.stderr and "canonical" in result.stderr
    assert "Traceback" not in result.stderr


def test_policy_max_bytes_above_what_the_agent_verifies_is_refused() -> None:
    from agent.core.policy import envelope
    from agent.daemon import policy_cache

    assert parse_module.MAX_ENVELOPE_BYTES == envelope.MAX_ENVELOPE_BYTES
    assert policy_cache.MAX_ENVELOPE_BYTES == envelope.MAX_ENVELOPE_BYTES
    err = _error({"policy_max_bytes": envelope.MAX_ENVELOPE_BYTES + 1})
    assert err.key == "policy_max_bytes"
    assert parse_config({"policy_max_bytes": envelope.MAX_ENVELOPE_BYTES}, SOURCE)


@pytest.mark.parametrize("url", ["https://policy.example:99999/p", "https://policy.example:x/p"])
def test_a_policy_url_with_a_bad_port_is_a_config_error(url: str) -> None:
    err = _error({"policy_url": url, **PARTNERS["policy_url"]})
    assert err.key == "policy_url"
    assert "Port" in str(err)


# ------------------------------------------------------------------ what --check missed (red team)


def _check_file(
    tmp_path: Path, values: Mapping[str, object], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    code = config_main(["--check", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("audit_dir", "FILE", "exists and is not a directory"),
        ("audit_dir", "FILE/below", "is not a directory, so"),
        ("audit_dir", "/proc/pullgate-audit", "kernel file system"),
        ("listen", "FILE/x.sock", "exists and is not a directory"),
        ("listen", "FILE", "exists and is not a socket"),
    ],
)
def test_check_refuses_directories_the_agent_cannot_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, fragment: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    code, err = _check_file(tmp_path, {key: value.replace("FILE", str(a_file))}, capsys)
    assert code == 2, err
    assert f": {key}: " in err and fragment in err, err
    assert a_file.read_text() == "not a directory\n"


def test_check_accepts_directories_that_can_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {"audit_dir": str(tmp_path / "new" / "audit"), "listen": str(tmp_path / "s.sock")}
    code, err = _check_file(tmp_path, values, capsys)
    assert code == 0, err


def test_a_policy_url_scheme_in_capitals_is_normalised_for_the_fetcher() -> None:
    from agent.daemon.policy_fetch import Fetcher

    url = "HTTPS://Policy.Example/Pullgate/p.json"
    parsed = parse_config({"policy_url": url, **PARTNERS["policy_url"]}, SOURCE)
    assert parsed.policy_url == "https://Policy.Example/Pullgate/p.json"
    # The fetcher compares the scheme without regard to case, too; an http:// URL is still
    # refused before any request.
    with pytest.raises(Exception, match="plain HTTP"):
        Fetcher("HTTP://policy.example/p.json").fetch()
    assert parse_config({"upstream": "UNIX:///var/run/docker.sock"}, SOURCE).upstream_path == Path(
        "/var/run/docker.sock"
    )


def test_fetcher_accepts_an_https_url_in_capitals(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    from agent.daemon.policy_fetch import Fetcher, FetchError

    def no_network(*args: object, **kwargs: object) -> object:
        raise requests.ConnectionError("no network in this test")

    monkeypatch.setattr(requests.Session, "request", no_network)
    monkeypatch.setattr(requests.Session, "get", no_network)
    with pytest.raises(FetchError) as caught:
        Fetcher("HTTPS://policy.example/p.json", connect_timeout=1, read_timeout=1).fetch()
    assert "plain HTTP" not in caught.value.reason


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("refresh_interval", "1ms", "must be at least 1m"),
        ("refresh_interval", 59, "must be at least 1m"),
        ("fetch_timeout", "999ms", "must be at least 1s"),
    ],
)
def test_fetch_rate_settings_have_a_sane_minimum(key: str, value: object, fragment: str) -> None:
    err = _error({key: value})
    assert err.key == key and fragment in str(err)
    assert parse_config({key: 60}, SOURCE)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@policy.example/p.json",
        "https://token@policy.example/p.json",
        "https://:secret@policy.example:8443/p.json",
    ],
)
def test_credentials_in_a_url_are_refused_and_not_repeated(url: str) -> None:
    err = _error({"policy_url": url, **PARTNERS["policy_url"]})
    assert err.key == "policy_url"
    assert "must not contain a user name or password" in str(err)
    assert "secret" not in str(err) and "token" not in str(err)
    help_err = _error({"help_url": url})
    assert "secret" not in str(help_err) and help_err.key == "help_url"


@pytest.mark.parametrize("where", ["flag", "config"])
def test_the_agent_reports_a_listen_path_it_cannot_create_as_a_config_error(
    tmp_path: Path, where: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    listen = str(a_file / "x.sock")
    args = ["--upstream", f"unix://{tmp_path / 'docker.sock'}", "--no-watch"]
    args += ["--state-dir", str(tmp_path / "state"), "--audit-dir", str(tmp_path / "audit")]
    if where == "flag":
        args += ["--listen", listen]
    else:
        (tmp_path / "config.json").write_text(json.dumps({"listen": listen}))
        args += ["--config", str(tmp_path / "config.json")]
    result = subprocess.run(
        [sys.executable, "-m", "agent", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{a_file} exists and is not a directory" in result.stderr, result.stderr


def test_a_listen_path_that_is_a_file_is_never_deleted(tmp_path: Path) -> None:
    # The shim and the control API replace a dead socket at their path; a regular file
    # (`listen: /etc/passwd` as root) must be refused, not unlinked.
    from agent.platform.unix_sockets import claim_socket_path

    a_file = tmp_path / "a-file"
    a_file.write_text("keep me\n")
    with pytest.raises(RuntimeError, match="is not a socket"):
        claim_socket_path(a_file, "the Docker socket shim")
    assert a_file.read_text() == "keep me\n"
    claim_socket_path(tmp_path / "absent.sock", "the Docker socket shim")  # nothing there: fine
