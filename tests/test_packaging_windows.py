"""Windows packaging (issue 16): the ADMX/ADML templates and the MSI's structure.

There is no Windows machine here. What is checked here: the administrative templates
generated from the key registry (they parse, carry every key with the element Group Policy
must write for the agent's registry reader, and follow the registry when it changes), the
bundle fragment generator, and a real MSI built by Debian's wixl from
packaging/windows/Pullgate.wxs, whose tables are read back with msiinfo. The MSI is built
around a STAND-IN payload (a few text files named like the bundle's executables), since
PyInstaller cannot freeze a Windows bundle on Linux: it checks the installer's structure,
never the product, and is never shipped. docs/deploy/windows.md says what the Windows
runner must still run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.cli import service_cmd
from agent.cli.main import build_parser
from agent.config import admx as admx_module
from agent.config.__main__ import main as config_main
from agent.config.admx import ELEMENTS, POLICY_KEY, render_adml, render_admx
from agent.config.keys import KEYS, ConfigKey, ManagedConfig
from agent.config.render import EXAMPLE_VALUES
from agent.config.sources import (
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_SZ,
    WINDOWS_POLICY_KEY,
    parse_registry_values,
)
from agent.platform import windows
from tests.agent_process import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = ROOT / "packaging" / "windows"
POLICY_DEFINITIONS = WINDOWS / "PolicyDefinitions"
NS = {"p": "http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions"}
P = "{" + NS["p"] + "}"


def _admx(text: str | None = None) -> ET.Element:
    return ET.fromstring(text if text is not None else render_admx())


def _adml(text: str | None = None) -> ET.Element:
    return ET.fromstring(text if text is not None else render_adml())


def _policies(root: ET.Element) -> dict[str, ET.Element]:
    return {p.attrib["name"]: p for p in root.iterfind("p:policies/p:policy", NS)}


def _element(policy: ET.Element) -> ET.Element:
    elements = policy.find("p:elements", NS)
    assert elements is not None and len(elements) == 1, policy.attrib["name"]
    return elements[0]


def _strings(adml: ET.Element) -> dict[str, str]:
    return {
        s.attrib["id"]: s.text or ""
        for s in adml.iterfind("p:resources/p:stringTable/p:string", NS)
    }


def _presentations(adml: ET.Element) -> dict[str, ET.Element]:
    return {
        p.attrib["id"]: p
        for p in adml.iterfind("p:resources/p:presentationTable/p:presentation", NS)
    }


# ------------------------------------------------------------------ ADMX and ADML


def test_admx_carries_every_key_with_the_element_of_its_type() -> None:
    admx = _admx()
    assert admx.tag == P + "policyDefinitions"
    policies = _policies(admx)
    assert list(policies) == [key.name for key in KEYS]
    for key in KEYS:
        policy = policies[key.name]
        assert policy.attrib["class"] == "Machine"
        assert policy.attrib["key"] == POLICY_KEY
        assert WINDOWS_POLICY_KEY == "HKLM\\" + POLICY_KEY
        category = policy.find("p:parentCategory", NS)
        assert category is not None and category.attrib["ref"] == "Pullgate"
        element = _element(policy)
        assert element.tag == P + ELEMENTS[key.type], key.name
        assert element.attrib["valueName"] == key.name
        assert "key" not in element.attrib  # the policy's key: a subkey would go unread
        if key.type == "integer":
            assert int(element.attrib["minValue"]) == (key.minimum or 0)
            assert int(element.attrib["maxValue"]) == 0xFFFFFFFF  # REG_DWORD, not 9999
        if key.type == "path":
            assert element.attrib["expandable"] == "true"
        if key.type == "enum":
            values = [v.text for v in element.iterfind("p:item/p:value/p:string", NS)]
            assert values == [value for value, _ in key.choices]
        if key.type == "boolean":
            true = element.find("p:trueValue/p:decimal", NS)
            false = element.find("p:falseValue/p:decimal", NS)
            assert true is not None and true.attrib["value"] == "1"
            assert false is not None and false.attrib["value"] == "0"
    # A list is multiText (REG_MULTI_SZ under the key), never ADMX's list element, which
    # writes a subkey of values that the agent's reader never looks at.
    assert admx.find(".//p:list", NS) is None
    assert {k.type for k in KEYS} <= set(ELEMENTS)


def test_adml_resolves_every_reference_and_shows_the_defaults() -> None:
    admx, adml = _admx(), _adml()
    strings, presentations = _strings(adml), _presentations(adml)
    text = render_admx()
    for ref in re.findall(r"\$\(string\.([^)]+)\)", text):
        assert ref in strings, ref
    for ref in re.findall(r"\$\(presentation\.([^)]+)\)", text):
        assert ref in presentations, ref
    policies = _policies(admx)
    for key in KEYS:
        help_text = strings[f"{key.name}_Help"]
        assert help_text.startswith(key.description.replace("`", "")[:60])
        assert f"HKLM\\{POLICY_KEY}\\{key.name}" in help_text
        for value, meaning in key.choices:
            assert f"{value}: {meaning}" in help_text
        presentation = presentations[key.name]
        assert len(presentation) == 1
        control = presentation[0]
        assert control.attrib["refId"] == _element(policies[key.name]).attrib["id"]
        if key.type == "integer":
            assert control.tag == P + "decimalTextBox"
            assert control.attrib["defaultValue"] == str(key.default)
        elif key.type == "boolean":
            assert control.tag == P + "checkBox"
            assert control.attrib["defaultChecked"] == str(key.default).lower()
        elif key.type == "enum":
            assert control.tag == P + "dropdownList"
            index = int(control.attrib["defaultItem"])
            assert key.choices[index][0] == key.default
        elif key.type == "string-list":
            assert control.tag == P + "multiTextBox"
        else:
            assert control.tag == P + "textBox"
            default = control.find("p:defaultValue", NS)
            if isinstance(key.default, str):
                assert default is not None and default.text == key.default
            else:
                assert default is None
    with pytest.raises(ValueError, match="de-DE"):
        render_adml("de-DE")


def _group_policy_writes(element: ET.Element, value: object) -> tuple[object, int]:
    """What Group Policy (or Intune's ADMX-backed CSP) writes for ``value`` entered in
    this element: the registry value and its type, per the ADMX schema."""
    kind = element.tag.removeprefix(P)
    if kind == "text":
        reg = REG_EXPAND_SZ if element.attrib.get("expandable") == "true" else REG_SZ
        return str(value), reg
    if kind == "decimal":
        assert isinstance(value, int) and not isinstance(value, bool)
        assert int(element.attrib["minValue"]) <= value <= int(element.attrib["maxValue"])
        return value, REG_DWORD
    if kind == "boolean":
        branch = "p:trueValue/p:decimal" if value else "p:falseValue/p:decimal"
        chosen = element.find(branch, NS)
        assert chosen is not None
        return int(chosen.attrib["value"]), REG_DWORD
    if kind == "enum":
        items = [v.text for v in element.iterfind("p:item/p:value/p:string", NS)]
        assert value in items
        return value, REG_SZ
    assert kind == "multiText"
    assert isinstance(value, list | tuple)
    return list(value), REG_MULTI_SZ


def _comparable(config: ManagedConfig) -> dict[str, Any]:
    return {k.name: getattr(config, k.name) for k in KEYS}


def test_what_group_policy_writes_is_what_the_agent_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every example value, entered in its policy, reads back as the same config."""
    monkeypatch.setenv("ProgramData", r"C:\ProgramData")  # REG_EXPAND_SZ expands it
    policies = _policies(_admx())
    values: dict[str, object] = dict(EXAMPLE_VALUES)
    values |= {
        "ca_bundle": r"%ProgramData%\Pullgate\policy-ca.pem",
        "audit_native_log": False,
        "key_threshold": 2,
        "audit_rotate_bytes": 128 * 1024 * 1024,
        "sign_in_methods": ["device"],
    }
    registry = {
        name: _group_policy_writes(_element(policies[name]), value)
        for name, value in values.items()
    }
    config = parse_registry_values(registry, WINDOWS_POLICY_KEY)
    assert config.set_keys == frozenset(values)
    assert config.audit_native_log is False
    assert config.trusted_keys == tuple(EXAMPLE_VALUES["trusted_keys"])  # type: ignore[arg-type]
    assert str(config.ca_bundle) == r"C:\ProgramData\Pullgate\policy-ca.pem"
    # Every type once more at its default, as the dialogs offer it.
    presentations = _presentations(_adml())
    for key in KEYS:
        control = presentations[key.name][0]
        default: object = key.default
        if key.type == "boolean":
            default = control.attrib["defaultChecked"] == "true"
        if default is None or default == ():
            continue
        written = _group_policy_writes(_element(policies[key.name]), default)
        read = parse_registry_values({key.name: written}, WINDOWS_POLICY_KEY)
        assert _comparable(read) == _comparable(ManagedConfig()), key.name


def _fake_registry(monkeypatch: pytest.MonkeyPatch, keys: tuple[ConfigKey, ...]) -> None:
    monkeypatch.setattr(admx_module, "KEYS", keys)


def test_templates_follow_the_key_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = {key.name: key for key in KEYS}
    before_admx, before_adml = render_admx(), render_adml()
    changed = (
        replace(by_name["key_threshold"], minimum=3, default=3),
        replace(
            by_name["audit_failure"],
            choices=(*by_name["audit_failure"].choices, ("queue", "hold pulls until written")),
        ),
        replace(by_name["audit_native_log"], default=False),
        replace(by_name["refresh_interval"], default="2h"),
        ConfigKey("new_list", "string-list", (), "A list added later. More text.", example="x"),
    )
    _fake_registry(monkeypatch, changed)
    admx, adml = render_admx(), render_adml()
    assert (admx, adml) != (before_admx, before_adml)
    policies = _policies(_admx(admx))
    assert list(policies) == [key.name for key in changed]
    assert _element(policies["key_threshold"]).attrib["minValue"] == "3"
    choices = _element(policies["audit_failure"]).iterfind("p:item/p:value/p:string", NS)
    assert [c.text for c in choices] == ["deny", "allow", "queue"]
    assert _element(policies["new_list"]).tag == P + "multiText"
    presentations, strings = _presentations(_adml(adml)), _strings(_adml(adml))
    assert presentations["key_threshold"][0].attrib["defaultValue"] == "3"
    assert presentations["audit_native_log"][0].attrib["defaultChecked"] == "false"
    default = presentations["refresh_interval"][0].find("p:defaultValue", NS)
    assert default is not None and default.text == "2h"
    assert "queue: hold pulls until written" in strings["audit_failure_Help"]
    assert strings["new_list_Help"].startswith("A list added later.")
    # And the committed copies no longer match: the keep-in-step test below would fail.
    assert (POLICY_DEFINITIONS / "Pullgate.admx").read_text(encoding="utf-8") != admx


def test_committed_templates_are_generated_from_the_registry(tmp_path: Path) -> None:
    hint = "python -m agent.config --admx packaging/windows/PolicyDefinitions"
    admx = (POLICY_DEFINITIONS / "Pullgate.admx").read_text(encoding="utf-8")
    adml = (POLICY_DEFINITIONS / "en-US" / "Pullgate.adml").read_text(encoding="utf-8")
    assert admx == render_admx(), f"Pullgate.admx is out of date: {hint}"
    assert adml == render_adml(), f"Pullgate.adml is out of date: {hint}"
    assert config_main(["--admx", str(tmp_path / "PolicyDefinitions")]) == 0
    written = tmp_path / "PolicyDefinitions"
    assert (written / "Pullgate.admx").read_bytes() == (
        POLICY_DEFINITIONS / "Pullgate.admx"
    ).read_bytes()
    assert (written / "en-US" / "Pullgate.adml").read_bytes() == (
        POLICY_DEFINITIONS / "en-US" / "Pullgate.adml"
    ).read_bytes()


# ------------------------------------------------------------------ the bundle fragment


def _wxs_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pullgate_wxs", WINDOWS / "wxs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAND_IN = b"stand-in payload for the MSI structure test; not Pullgate\n"
STAND_IN_FILES = (
    "pullgate.exe",
    "pullgate-tray.exe",
    "_internal/python311.dll",
    "_internal/base_library.zip",
    "_internal/cryptography/hazmat/bindings/_rust.pyd",
    "_internal/PySide6/plugins/platforms/qwindows.dll",
    "_internal/certifi/cacert.pem",
    "_internal/a name with spaces & ampersand.txt",
)


def _stand_in_payload(directory: Path) -> Path:
    """A STAND-IN for the frozen Windows bundle: text files at the bundle's paths."""
    for relative in STAND_IN_FILES:
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(STAND_IN + relative.encode())
    return directory


def test_bundle_fragment_lists_every_file_but_the_declared_ones(tmp_path: Path) -> None:
    wxs = _wxs_module()
    bundle = _stand_in_payload(tmp_path / "stand-in-bundle")
    text = wxs.bundle_fragment(bundle)
    assert text == wxs.bundle_fragment(bundle)  # deterministic
    root = ET.fromstring(text)
    ns = {"w": "http://schemas.microsoft.com/wix/2006/wi"}
    sources = [f.attrib["Source"] for f in root.iterfind(".//w:File", ns)]
    expected = sorted(r for r in STAND_IN_FILES if r not in wxs.DECLARED)
    assert sorted(s.removeprefix("$(var.BundleDir)/") for s in sources) == expected
    refs = [r.attrib["Id"] for r in root.iterfind(".//w:ComponentGroup/w:ComponentRef", ns)]
    components = [c.attrib["Id"] for c in root.iterfind(".//w:Component", ns)]
    assert sorted(refs) == sorted(components) and len(set(components)) == len(expected)
    assert all(len(i) <= 72 for i in components)
    (bundle / "_internal" / "link").symlink_to("python311.dll")
    with pytest.raises(ValueError, match="symlink"):
        wxs.bundle_fragment(bundle)
    (bundle / "_internal" / "link").unlink()
    (bundle / "pullgate-tray.exe").unlink()
    with pytest.raises(ValueError, match=r"pullgate-tray\.exe"):
        wxs.bundle_fragment(bundle)


# ------------------------------------------------------------------ the MSI (wixl)


def _msi_table(msi: Path, table: str) -> list[dict[str, str]]:
    """One table of ``msi`` as rows of {column: value}, read with ``msiinfo export``."""
    out = subprocess.run(
        ["msiinfo", "export", str(msi), table], check=True, capture_output=True, timeout=30
    ).stdout.decode()
    lines = out.replace("\r\n", "\n").rstrip("\n").split("\n")
    columns = lines[0].split("\t")
    return [dict(zip(columns, line.split("\t"), strict=False)) for line in lines[3:]]


def _by(rows: list[dict[str, str]], column: str) -> dict[str, dict[str, str]]:
    return {row[column]: row for row in rows}


def _directory_path(directories: Mapping[str, dict[str, str]], ident: str) -> str:
    parts: list[str] = []
    while ident in directories:
        row = directories[ident]
        name = row["DefaultDir"].split(":")[-1].split("|")[-1]
        if name not in (".", "SourceDir"):
            parts.append(name)
        ident = row["Directory_Parent"]
    return "/".join(reversed(parts))


def service_cmd_parses(arguments: list[str]) -> bool:
    """``pullgate <arguments>`` parses as the service's subcommand (agent.cli.service_cmd)."""
    args = build_parser(arguments).parse_args(arguments)
    return bool(args.command == "service" and service_cmd.agent_arguments(args) == [])


def _build_msi(workdir: Path, bundle: Path) -> Path:
    """packaging/windows/wxs.py, then wixl, as build.ps1 does with candle and light."""
    wxs = _wxs_module()
    (workdir / "bundle.wxs").write_text(wxs.bundle_fragment(bundle), encoding="utf-8")
    msi = workdir / "pullgate-stand-in.msi"
    # wixl opens sources relative to the working directory (it refuses absolute paths).
    subprocess.run(
        [
            "wixl",
            "--arch",
            "x64",
            "-D",
            "Version=0.1.0",
            "-D",
            f"BundleDir={os.path.relpath(bundle, workdir)}",
            "-D",
            f"PolicyDir={os.path.relpath(POLICY_DEFINITIONS, workdir)}",
            "-o",
            msi.name,
            str(WINDOWS / "Pullgate.wxs"),
            "bundle.wxs",
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return msi


def test_msi_structure_with_a_stand_in_payload(tmp_path: Path) -> None:
    """A real MSI from Pullgate.wxs, around a STAND-IN payload (never shipped)."""
    missing = [tool for tool in ("wixl", "msiinfo") if shutil.which(tool) is None]
    if missing:
        skip_or_fail(
            f"{', '.join(missing)} missing: apt-get install wixl msitools "
            "(scripts/install-system-deps.sh)"
        )
    bundle = _stand_in_payload(tmp_path / "stand-in-bundle")
    msi = _build_msi(tmp_path, bundle)
    tables = (
        subprocess.run(["msiinfo", "tables", str(msi)], check=True, capture_output=True, timeout=30)
        .stdout.decode()
        .split()
    )
    # wixl writes no permission or service-config tables (docs/deploy/windows.md): the
    # ACLs and failure actions are custom actions, checked below.
    for absent in ("LockPermissions", "MsiLockPermissionsEx", "MsiServiceConfigFailureActions"):
        assert absent not in tables

    summary = {r["PropertyId"]: r["Value"] for r in _msi_table(msi, "_SummaryInformation")}
    assert summary["7"] == "x64;1033"  # template: a 64-bit package
    assert int(summary["14"]) >= 500

    directories = _by(_msi_table(msi, "Directory"), "Directory")
    assert directories["INSTALLDIR"]["Directory_Parent"] == "ProgramFiles64Folder"
    assert directories["PULLGATEDATA"]["Directory_Parent"] == "CommonAppDataFolder"
    assert _directory_path(directories, "STATEDIR") == "Pullgate/State"
    assert _directory_path(directories, "AUDITDIR") == "Pullgate/Logs"

    components = _by(_msi_table(msi, "Component"), "Component")
    for name, row in components.items():
        assert int(row["Attributes"]) & 256, f"{name}: not a 64-bit component"
        assert re.fullmatch(r"\{[0-9A-F-]{36}\}", row["ComponentId"]), name
    files = _msi_table(msi, "File")
    installed = {
        _directory_path(directories, components[f["Component_"]]["Directory_"])
        + "/"
        + f["FileName"].split("|")[-1]: f
        for f in files
    }
    expected = {f"Pullgate/{r}" for r in STAND_IN_FILES} | {
        "Pullgate/PolicyDefinitions/Pullgate.admx",
        "Pullgate/PolicyDefinitions/en-US/Pullgate.adml",
    }
    assert set(installed) == expected
    for relative in STAND_IN_FILES:
        row = installed[f"Pullgate/{relative}"]
        assert int(row["FileSize"]) == (bundle / relative).stat().st_size
        assert components[row["Component_"]]["KeyPath"] == row["File"]  # one file each
    admx_size = int(installed["Pullgate/PolicyDefinitions/Pullgate.admx"]["FileSize"])
    assert admx_size == len(render_admx().encode())

    service = _by(_msi_table(msi, "ServiceInstall"), "Name")[windows.SERVICE_NAME]
    assert service["DisplayName"] == windows.SERVICE_DISPLAY_NAME
    assert service["StartName"] == "LocalSystem"
    assert int(service["ServiceType"]) == 0x10  # SERVICE_WIN32_OWN_PROCESS
    assert int(service["StartType"]) == 2  # SERVICE_AUTO_START
    assert int(service["ErrorControl"]) == 1
    # The service's entry point, `pullgate.exe service`, and no paths: the agent takes
    # them from agent.platform.windows, the same folders as the Directory table's.
    assert service["Arguments"] == " ".join(windows.SERVICE_ARGUMENTS) == "service"
    assert service_cmd_parses(service["Arguments"].split())
    assert components[service["Component_"]]["KeyPath"] == "PullgateExe"
    environ = {"ProgramData": r"C:\ProgramData"}
    for ident, path in (
        ("STATEDIR", windows.state_dir(environ)),
        ("AUDITDIR", windows.audit_dir(environ)),
    ):
        assert "/".join(path.parts[-2:]) == _directory_path(directories, ident)
    control = _by(_msi_table(msi, "ServiceControl"), "Name")[windows.SERVICE_NAME]
    # Start on install (1), stop on install and uninstall (2 | 32), delete on uninstall (128).
    assert int(control["Event"]) == 1 | 2 | 32 | 128
    assert control["Wait"] == "1" and control["Component_"] == service["Component_"]
    assert not control.get("Arguments")  # started with the ServiceInstall's arguments

    registry = _msi_table(msi, "Registry")
    # The service's Event Log source is the MSI's, so an uninstall removes it.
    source = {
        r["Name"]: r
        for r in registry
        if r["Key"]
        == "SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\" + windows.EVENT_SOURCE
    }
    assert set(source) == {"EventMessageFile", "TypesSupported"}
    assert all(
        r["Root"] == "2" and r["Component_"] == service["Component_"] for r in source.values()
    )
    assert source["EventMessageFile"]["Value"] == "[INSTALLDIR]_internal\\servicemanager.pyd"
    assert source["TypesSupported"]["Value"] == "#7"  # REG_DWORD: error, warning, information
    run_keys = [r for r in registry if r["Key"] == r"SOFTWARE\Microsoft\Windows\CurrentVersion\Run"]
    assert len(run_keys) == 1
    run = run_keys[0]
    assert run["Root"] == "2" and run["Name"] == "Pullgate"  # HKLM: every user's logon
    assert run["Value"] == '"[INSTALLDIR]pullgate-tray.exe"'
    assert components[run["Component_"]]["KeyPath"] == "PullgateTrayExe"

    creates = {r["Directory_"] for r in _msi_table(msi, "CreateFolder")}
    assert {"STATEDIR", "AUDITDIR"} <= creates

    actions = _by(_msi_table(msi, "CustomAction"), "Action")
    deferred_system_exe = 50 | 0x400 | 0x800  # exe from a property, in-script, no impersonation
    for name in ("DataDirOwner", "DataDirAcl", "AuditDirAcl"):
        assert int(actions[name]["Type"]) == deferred_system_exe, name
        assert actions[name]["Source"] == "PULLGATE_ICACLS"
    for name in ("ServiceFailureActions", "ServiceFailureFlag"):
        assert int(actions[name]["Type"]) == deferred_system_exe, name
        assert actions[name]["Source"] == "PULLGATE_SC"
    assert actions["SetIcaclsExe"]["Target"] == "[System64Folder]icacls.exe"
    assert actions["SetScExe"]["Target"] == "[System64Folder]sc.exe"
    users = "*S-1-5-32-545"
    data_acl, audit_acl = actions["DataDirAcl"]["Target"], actions["AuditDirAcl"]["Target"]
    assert data_acl.startswith('"[PULLGATEDATA]." /inheritance:r /grant:r')
    assert f"{users}:(OI)(CI)RX" in data_acl and f"{users}:(OI)(CI)F" not in data_acl
    assert audit_acl.startswith('"[AUDITDIR]." /inheritance:r') and users not in audit_acl
    for acl in (data_acl, audit_acl):
        assert "*S-1-5-18:(OI)(CI)F" in acl and "*S-1-5-32-544:(OI)(CI)F" in acl
    assert "/setowner *S-1-5-32-544" in actions["DataDirOwner"]["Target"]
    assert "restart/" in actions["ServiceFailureActions"]["Target"]
    assert actions["ServiceFailureFlag"]["Target"] == "failureflag PullgateAgent 1"

    sequence = {
        r["Action"]: (int(r["Sequence"]), r["Condition"])
        for r in _msi_table(msi, "InstallExecuteSequence")
    }
    at = {name: number for name, (number, _) in sequence.items()}
    assert at["CostFinalize"] < at["SetIcaclsExe"] < at["InstallInitialize"]
    assert at["CostFinalize"] < at["SetScExe"] < at["InstallInitialize"]
    assert at["CreateFolders"] < at["DataDirOwner"] < at["DataDirAcl"] < at["AuditDirAcl"]
    assert at["AuditDirAcl"] < at["InstallFinalize"]
    assert at["InstallServices"] < at["ServiceFailureActions"] < at["StartServices"]
    assert at["ServiceFailureActions"] < at["ServiceFailureFlag"] < at["StartServices"]
    # ICE63: the old version goes between InstallValidate and InstallInitialize.
    assert at["InstallValidate"] < at["RemoveExistingProducts"] < at["InstallInitialize"]
    for name in actions:
        assert sequence[name][1] == 'NOT REMOVE~="ALL"', name

    upgrades = {r["ActionProperty"]: r for r in _msi_table(msi, "Upgrade")}
    assert upgrades["WIX_UPGRADE_DETECTED"]["VersionMax"] == "0.1.0"
    assert int(upgrades["WIX_DOWNGRADE_DETECTED"]["Attributes"]) & 2  # detect only
    conditions = {r["Condition"] for r in _msi_table(msi, "LaunchCondition")}
    assert "NOT WIX_DOWNGRADE_DETECTED" in conditions
    properties = _by(_msi_table(msi, "Property"), "Property")
    assert properties["ALLUSERS"]["Value"] == "1"  # per machine
