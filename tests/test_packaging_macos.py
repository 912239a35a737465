"""The macOS package's artefacts, checked on Linux (issue 16; docs/deploy/macos.md).

Nothing here freezes, signs, notarises or installs: that needs a macOS runner
(packaging/macos/build.sh). What can be checked here is: the launchd plists, the component
plist, the distribution XML and the MDM profile parse and agree with each other and with
the layout packaging/macos/stage.py produces; the profile follows the key registry; the
pkg's scripts pass bash -n and shellcheck, and their file-system logic runs against a
temporary root (launchctl is only called on a Mac's own volume).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.config import keys as keys_module
from agent.config import parse as parse_module
from agent.config.keys import KEYS, ConfigKey, ManagedConfig
from agent.config.parse import ConfigError, parse_config
from agent.config.render import (
    DAEMON_LABEL,
    EXAMPLE_VALUES,
    TRAY_LABEL,
    render_mobileconfig,
)
from agent.config.sources import PREFERENCE_DOMAIN, parse_plist_config
from agent.daemon.audit_log import default_audit_dir
from agent.platform.paths import (
    MACOS_STATE_DIR,
    agent_log_file,
    default_state_dir,
    system_run_dir,
)
from tests.agent_process import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
INSTALLERS = ROOT / "installers" / "macos"
PACKAGING = ROOT / "packaging" / "macos"
TEAM_ID = "ABCDE12345"
SCRIPTS = ["preinstall", "postinstall", "uninstall.sh", "pullgate-common.sh"]


def _load_stage() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pullgate_macos_stage", PACKAGING / "stage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and friends look modules up by name
    spec.loader.exec_module(module)
    return module


stage: Any = _load_stage()


def _plist(path: Path) -> dict[str, Any]:
    document = plistlib.loads(path.read_bytes())
    assert isinstance(document, dict)
    return document


DAEMON = _plist(INSTALLERS / "com.pullgate.agent.plist")
TRAY = _plist(INSTALLERS / "com.pullgate.tray.plist")


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --------------------------------------------------------------------------- launchd


def test_the_daemon_runs_the_apps_agent_as_root_and_comes_back() -> None:
    assert DAEMON["Label"] == DAEMON_LABEL
    args = DAEMON["ProgramArguments"]
    assert args[0] == f"/{stage.APP}/{stage.AGENT_EXECUTABLE}"
    assert args[1] == "agent"
    assert DAEMON["UserName"] == "root"
    assert DAEMON["RunAtLoad"] is True
    assert DAEMON["KeepAlive"] is True
    assert isinstance(DAEMON["ThrottleInterval"], int) and 1 <= DAEMON["ThrottleInterval"] <= 10
    assert DAEMON["ProcessType"] == "Interactive"
    assert DAEMON["AssociatedBundleIdentifiers"] == [stage.BUNDLE_ID]
    assert "Program" not in DAEMON  # ProgramArguments[0] is the program


def test_the_daemon_passes_no_paths_the_agents_macos_defaults_are_the_scripts() -> None:
    """The LaunchDaemon runs `pullgate agent` alone: the agent's own defaults for root on
    macOS are the directories the pkg's scripts make (agent/platform/paths.py)."""
    assert DAEMON["ProgramArguments"] == [f"/{stage.APP}/{stage.AGENT_EXECUTABLE}", "agent"]
    audit_dir = default_audit_dir(platform="darwin", system=True)
    assert audit_dir == Path("/Library/Logs/Pullgate")
    log = agent_log_file("darwin")
    assert log is not None and log.parent == audit_dir
    assert not log.name.startswith("audit")  # not a name the audit chain reads
    assert agent_log_file("linux") is None  # journald has the system agent's lines there
    # The agent writes agent.log itself: launchd keeps no job's output.
    assert "StandardErrorPath" not in DAEMON and "StandardOutPath" not in DAEMON
    common = (INSTALLERS / "pullgate-common.sh").read_text()
    assert f'PG_STATE="${{root}}{MACOS_STATE_DIR}"' in common
    assert f'PG_LOGS="${{root}}{audit_dir}"' in common
    assert f'PG_RUN="${{root}}{system_run_dir("darwin")}"' in common
    # / is read-only on macOS: no /run, no /var/lib.
    assert system_run_dir("darwin") == Path("/var/run/pullgate")
    assert system_run_dir("linux") == Path("/run/pullgate")


def test_the_system_agents_state_dir_on_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == MACOS_STATE_DIR


def test_the_agent_writes_its_own_log_when_launchd_keeps_none(tmp_path: Path) -> None:
    """Under launchd without StandardErrorPath stderr is /dev/null: the agent's lines go
    to agent.log instead; a file or pipe an admin or a service manager gave is kept."""
    log = tmp_path / "logs" / "agent.log"
    script = (
        "import sys; from pathlib import Path; from agent.platform.paths import own_output; "
        f"print(own_output(Path({str(log)!r}))); print('line', file=sys.stderr)"
    )
    for stderr, redirected in ((subprocess.DEVNULL, True), (subprocess.PIPE, False)):
        done = subprocess.run(
            [sys.executable, "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=True,
        )
        if redirected:
            assert done.stdout == ""  # stdout went to the log too
            assert log.read_text() == "True\nline\n"
            assert log.stat().st_mode & 0o777 == 0o640
        else:
            assert done.stdout == "False\n" and done.stderr == "line\n"


def test_the_tray_runs_the_apps_main_executable_in_each_gui_session() -> None:
    assert TRAY["Label"] == TRAY_LABEL
    # No --control: the clients' default on macOS is the system agent's socket.
    assert TRAY["ProgramArguments"] == [f"/{stage.APP}/{stage.TRAY_EXECUTABLE}"]
    assert TRAY["LimitLoadToSessionType"] == "Aqua"
    assert TRAY["RunAtLoad"] is True
    assert TRAY["KeepAlive"] == {"SuccessfulExit": False}  # Quit ends it; a crash does not
    assert TRAY["AssociatedBundleIdentifiers"] == [stage.BUNDLE_ID]
    assert "UserName" not in TRAY  # it runs as the logged-in user


def test_the_payload_installs_the_plists_under_their_labels() -> None:
    dests = {Path(rel) for _, rel, _ in stage.PAYLOAD}
    assert Path(f"Library/LaunchDaemons/{DAEMON_LABEL}.plist") in dests
    assert Path(f"Library/LaunchAgents/{TRAY_LABEL}.plist") in dests
    assert all(mode == 0o644 for _, _, mode in stage.PAYLOAD)
    common = (INSTALLERS / "pullgate-common.sh").read_text()
    assert f"PG_DAEMON_LABEL={DAEMON_LABEL}\n" in common
    assert f"PG_TRAY_LABEL={TRAY_LABEL}\n" in common


def test_the_spec_builds_the_bundle_the_plists_name() -> None:
    spec = (PACKAGING / "pullgate.spec").read_text()
    assert f'BUNDLE_ID = "{stage.BUNDLE_ID}"' in spec
    assert 'name="Pullgate.app"' in spec
    assert stage.APP.endswith("/Pullgate.app")
    assert f'"CFBundleExecutable": "{Path(stage.TRAY_EXECUTABLE).name}"' in spec
    assert f'name="{Path(stage.AGENT_EXECUTABLE).name}"' in spec


# --------------------------------------------------------------------------- staging


def _stand_in_app(path: Path, bundle_id: str = stage.BUNDLE_ID) -> Path:
    """A stand-in for PyInstaller's output (scripts, not the product): the layout only."""
    (path / "Contents" / "MacOS").mkdir(parents=True)
    (path / "Contents" / "Frameworks").mkdir()
    (path / "Contents" / "Info.plist").write_bytes(
        plistlib.dumps({"CFBundleIdentifier": bundle_id, "CFBundleExecutable": "pullgate-tray"})
    )
    for rel in (stage.AGENT_EXECUTABLE, stage.TRAY_EXECUTABLE):
        exe = path / rel
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    # PyInstaller links data between Resources and Frameworks: kept as links.
    (path / "Contents" / "Frameworks" / "base_library.zip").write_bytes(b"")
    (path / "Contents" / "Resources").mkdir()
    (path / "Contents" / "Resources" / "base_library.zip").symlink_to(
        "../Frameworks/base_library.zip"
    )
    return path


def test_staging_puts_every_program_the_plists_run_in_the_payload(tmp_path: Path) -> None:
    app = _stand_in_app(tmp_path / "dist" / "Pullgate.app")
    root, scripts = stage.stage(app, tmp_path / "out")
    for plist in (DAEMON, TRAY):
        program = root / plist["ProgramArguments"][0].lstrip("/")
        assert program.is_file() and os.access(program, os.X_OK), program
    for name, rel, mode in stage.PAYLOAD:
        installed = root / rel
        assert installed.read_bytes() == (INSTALLERS / name).read_bytes()
        assert installed.stat().st_mode & 0o777 == mode
    for name, rel, mode in stage.APP_RESOURCES:
        installed = root / stage.APP / rel
        assert installed.read_bytes() == (INSTALLERS / name).read_bytes()
        assert installed.stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in scripts.iterdir()) == sorted(r for _, r, _ in stage.SCRIPTS)
    assert os.access(scripts / "preinstall", os.X_OK)
    assert os.access(scripts / "postinstall", os.X_OK)
    assert (root / stage.APP / "Contents/Resources/base_library.zip").is_symlink()
    # Staging again starts afresh.
    (root / "stale").write_text("x")
    root, _ = stage.stage(app, tmp_path / "out")
    assert not (root / "stale").exists()


def test_staging_refuses_an_app_that_is_not_pullgates(tmp_path: Path) -> None:
    wrong = _stand_in_app(tmp_path / "a" / "Pullgate.app", bundle_id="org.python.python")
    with pytest.raises(stage.StageError, match="CFBundleIdentifier"):
        stage.stage(wrong, tmp_path / "out")
    missing = _stand_in_app(tmp_path / "b" / "Pullgate.app")
    (missing / stage.AGENT_EXECUTABLE).unlink()
    with pytest.raises(stage.StageError, match="missing or not executable"):
        stage.stage(missing, tmp_path / "out")


# --------------------------------------------------------------------------- pkg metadata


def test_component_plist_pins_the_app_to_applications() -> None:
    components = plistlib.loads((PACKAGING / "component.plist").read_bytes())
    assert isinstance(components, list) and len(components) == 1
    (component,) = components
    assert component["RootRelativeBundlePath"] == stage.APP
    assert component["BundleIsRelocatable"] is False
    assert component["BundleHasStrictIdentifier"] is True
    assert component["BundleOverwriteAction"] == "upgrade"


def test_distribution_names_the_component_package() -> None:
    tree = ET.parse(PACKAGING / "distribution.xml")
    doc = tree.getroot()
    assert doc.tag == "installer-gui-script"
    assert doc.get("minSpecVersion") == "2"
    refs = doc.findall("pkg-ref")
    with_file = [r for r in refs if (r.text or "").strip()]
    assert len(with_file) == 1
    (ref,) = with_file
    assert ref.get("id") == stage.PKG_IDENTIFIER
    assert ref.get("version") == "@VERSION@"
    choices = {c.get("id"): c for c in doc.findall("choice")}
    choice_refs = [r.get("id") for c in choices.values() for r in c.findall("pkg-ref")]
    assert choice_refs == [stage.PKG_IDENTIFIER]
    outline = [line.get("choice") for line in doc.iter("line")]
    assert set(outline) == set(choices)
    domains = doc.find("domains")
    assert domains is not None and domains.get("enable_localSystem") == "true"
    assert domains.get("enable_currentUserHome") == "false"
    os_version = doc.find("allowed-os-versions/os-version")
    assert os_version is not None and os_version.get("min") == "13.0"
    # build.sh builds the component under the name the distribution refers to, with
    # the identifier the receipt (and uninstall.sh's pkgutil --forget) uses.
    build = (PACKAGING / "build.sh").read_text()
    assert f'"${{OUT}}/{(ref.text or "").strip()}"' in build
    assert f"--identifier {stage.PKG_IDENTIFIER} " in build
    common = (INSTALLERS / "pullgate-common.sh").read_text()
    assert f"PG_PKG_ID={stage.PKG_IDENTIFIER}\n" in common


def test_entitlements_are_only_the_justified_one() -> None:
    entitlements = plistlib.loads((PACKAGING / "entitlements.plist").read_bytes())
    assert entitlements == {"com.apple.security.cs.allow-unsigned-executable-memory": True}


# --------------------------------------------------------------------------- profile


def _every_key_values() -> dict[str, object]:
    """EXAMPLE_VALUES plus each remaining key's documented example: every key set."""
    values: dict[str, object] = dict(EXAMPLE_VALUES)
    for key in KEYS:
        if key.name in values:
            continue
        if key.example is None:
            value: object = key.choices[-1][0] if key.choices else key.default
        elif key.type == "integer":
            value = int(key.example)
        elif key.type == "boolean":
            value = key.example == "true"
        elif key.type == "string-list":
            value = [key.example]
        else:
            value = key.example
        values[key.name] = list(value) if isinstance(value, tuple) else value
    return values


def _plist_type_ok(key: ConfigKey, value: object) -> bool:
    if key.type == "boolean":
        return isinstance(value, bool)
    if key.type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if key.type == "duration":
        return isinstance(value, str | int) and not isinstance(value, bool)
    if key.type == "string-list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)  # text, URLs, paths, enums


def _payloads(profile: bytes) -> dict[str, dict[str, Any]]:
    document = plistlib.loads(profile)
    assert document["PayloadType"] == "Configuration"
    found = {p["PayloadType"]: p for p in document["PayloadContent"]}
    assert len(found) == len(document["PayloadContent"])
    return found


def test_profile_with_managed_login_items_carries_every_key_and_the_rules() -> None:
    values = _every_key_values()
    assert set(values) == {key.name for key in KEYS}
    profile = render_mobileconfig(values, team_id=TEAM_ID)
    payloads = _payloads(profile)
    assert set(payloads) == {PREFERENCE_DOMAIN, "com.apple.servicemanagement"}
    settings = payloads[PREFERENCE_DOMAIN]
    for key in KEYS:
        assert key.name in settings, key.name
        assert _plist_type_ok(key, settings[key.name]), (key.name, settings[key.name])
    # The agent reads back exactly what was rendered, the rules payload aside.
    read_back = dataclasses.replace(parse_plist_config(profile, "p"), source="x")
    assert read_back == dataclasses.replace(parse_config(values, "v"), source="x")
    rules = payloads["com.apple.servicemanagement"]["Rules"]
    assert {rule["RuleValue"] for rule in rules} == {DAEMON["Label"], TRAY["Label"]}
    for rule in rules:
        assert rule["RuleType"] == "Label"
        assert rule["TeamIdentifier"] == TEAM_ID
        assert rule["Comment"]
    sm = payloads["com.apple.servicemanagement"]
    assert sm["PayloadIdentifier"] != settings["PayloadIdentifier"]
    assert sm["PayloadUUID"] != settings["PayloadUUID"]
    assert render_mobileconfig(values, team_id=TEAM_ID) == profile  # deterministic


def test_without_a_team_id_the_profile_is_unchanged() -> None:
    plain = render_mobileconfig(EXAMPLE_VALUES)
    assert set(_payloads(plain)) == {PREFERENCE_DOMAIN}
    example = ROOT / "packaging" / "mdm" / "com.pullgate.agent.example.mobileconfig"
    assert example.read_bytes() == plain


def test_packaged_example_with_managed_login_items_is_generated() -> None:
    example = (
        ROOT / "packaging" / "mdm" / "com.pullgate.agent.example-managed-login-items.mobileconfig"
    )
    assert example.read_bytes() == render_mobileconfig(EXAMPLE_VALUES, team_id=TEAM_ID)


@pytest.mark.parametrize("team_id", ["abcde12345", "ABCDE1234", "ABCDE123456", "ABCDE 1234", ""])
def test_a_malformed_team_id_is_refused(team_id: str) -> None:
    with pytest.raises(ConfigError, match="team identifier"):
        render_mobileconfig(EXAMPLE_VALUES, team_id=team_id)


def test_cli_renders_the_profile_with_a_team_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.config.__main__ import main as config_main

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(EXAMPLE_VALUES))
    assert config_main(["--mobileconfig", str(settings), "--team-id", TEAM_ID]) == 0
    out = capsys.readouterr().out.encode()
    assert out == render_mobileconfig(EXAMPLE_VALUES, team_id=TEAM_ID)
    assert config_main(["--mobileconfig", str(settings), "--team-id", "nope"]) == 2
    assert "team identifier" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config_main(["--markdown", "--team-id", TEAM_ID])


def test_a_key_added_to_the_registry_appears_in_the_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = ConfigKey("fake_limit", "integer", None, "A key only this test has.", minimum=1)
    extended = dataclasses.make_dataclass(
        "ExtendedConfig",
        [("fake_limit", int | None, dataclasses.field(default=None))],
        bases=(ManagedConfig,),
        frozen=True,
    )
    values = {"org": "acme", "fake_limit": 7}
    with pytest.raises(ConfigError, match="unknown key"):
        render_mobileconfig(values, team_id=TEAM_ID)
    monkeypatch.setattr(parse_module, "KEYS", (*KEYS, fake))
    monkeypatch.setitem(keys_module.KEYS_BY_NAME, "fake_limit", fake)
    monkeypatch.setattr(parse_module, "ManagedConfig", extended)
    profile = render_mobileconfig(values, team_id=TEAM_ID)
    settings = _payloads(profile)[PREFERENCE_DOMAIN]
    assert settings["fake_limit"] == 7
    assert b"<key>fake_limit</key>\n\t\t\t<integer>7</integer>" in profile
    read_back: Any = parse_plist_config(profile, "p")
    assert read_back.fake_limit == 7
    # A changed constraint in the registry changes what may be rendered.
    monkeypatch.setitem(
        keys_module.KEYS_BY_NAME, "fake_limit", dataclasses.replace(fake, minimum=10)
    )
    with pytest.raises(ConfigError, match="fake_limit"):
        render_mobileconfig(values, team_id=TEAM_ID)


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses(name: str) -> None:
    subprocess.run(["bash", "-n", str(INSTALLERS / name)], check=True)


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        skip_or_fail("shellcheck is not installed (scripts/install-system-deps.sh installs it)")
    result = subprocess.run(
        [shellcheck, "-x", "-s", "bash", *SCRIPTS, str(PACKAGING / "build.sh")],
        cwd=INSTALLERS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, Path]:
    """The pkg's payload laid onto a temporary volume, and its scripts, as Installer would."""
    if os.geteuid() != 0:
        pytest.skip("the scripts chown to root: run as root")
    app = _stand_in_app(tmp_path / "dist" / "Pullgate.app")
    payload, scripts = stage.stage(app, tmp_path / "out")
    volume = tmp_path / "volume"
    shutil.copytree(payload, volume, symlinks=True)
    return volume, scripts


def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _install(volume: Path, scripts: Path) -> None:
    # Installer's arguments: the package, the install location, the target volume.
    for name in ("preinstall", "postinstall"):
        _run(scripts / name, "/tmp/Pullgate.pkg", "/", str(volume))


def test_install_makes_root_owned_dirs_and_keeps_the_audit_log(staged: tuple[Path, Path]) -> None:
    volume, scripts = staged
    logs = volume / "Library/Logs/Pullgate"
    logs.mkdir(parents=True)
    logs.chmod(0o777)
    os.chown(logs, 1000, 1000)
    record = logs / "audit-20250101T000000Z-1.jsonl"
    record.write_text('{"seq": 1}\n')
    agent_log = logs / "agent.log"
    agent_log.write_text("earlier\n")
    _install(volume, scripts)
    _install(volume, scripts)  # idempotent: an upgrade, or a retried install
    state = volume / "Library/Application Support/Pullgate"
    for path, mode in ((state, 0o755), (logs, 0o750)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, mode), path
    assert record.read_text() == '{"seq": 1}\n'
    assert agent_log.read_text() == "earlier\n"
    link = volume / "usr/local/bin/pullgate"
    assert os.readlink(link) == f"/{stage.APP}/{stage.AGENT_EXECUTABLE}"
    for rel in ("Library/LaunchDaemons/com.pullgate.agent.plist",):
        st = (volume / rel).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o644)


def test_install_refuses_a_symlinked_audit_dir(staged: tuple[Path, Path], tmp_path: Path) -> None:
    volume, scripts = staged
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (volume / "Library/Logs").mkdir(parents=True)
    (volume / "Library/Logs/Pullgate").symlink_to(elsewhere)
    result = subprocess.run(
        ["bash", str(scripts / "preinstall"), "/tmp/Pullgate.pkg", "/", str(volume)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "symbolic link" in result.stdout + result.stderr
    assert elsewhere.stat().st_mode & 0o777 != 0o750  # untouched


def test_uninstall_removes_everything_but_the_audit_log(staged: tuple[Path, Path]) -> None:
    volume, scripts = staged
    _install(volume, scripts)
    logs = volume / "Library/Logs/Pullgate"
    record = logs / "audit-20250101T000000Z-1.jsonl"
    record.write_text('{"seq": 1}\n')
    state = volume / "Library/Application Support/Pullgate"
    (state / "policy.dsse.json").write_text("{}")
    # Run from inside the app it removes, as IT runs it (bash keeps the script open).
    resources = volume / stage.APP / "Contents/Resources"
    runner = volume.parent / "uninstall-copy"
    shutil.copytree(resources, runner)
    out = _run(resources / "uninstall.sh", env={"PULLGATE_ROOT": str(volume)})
    assert f"The audit log is kept in {logs}" in out
    assert record.read_text() == '{"seq": 1}\n'
    for gone in (
        stage.APP,
        "Library/LaunchDaemons/com.pullgate.agent.plist",
        "Library/LaunchAgents/com.pullgate.tray.plist",
        "usr/local/bin/pullgate",
        "Library/Application Support/Pullgate",
    ):
        assert not os.path.lexists(volume / gone), gone
    # Again, from a copy (the app is gone): nothing left to remove, the log still kept.
    _run(runner / "uninstall.sh", env={"PULLGATE_ROOT": str(volume)})
    assert record.exists()
