"""Where managed config comes from: a JSON file, macOS managed preferences or a
``.mobileconfig``, and the Windows policy key.

The readers are thin: each turns its format into plain values for
:func:`~agent.config.parse.parse_config`: a JSON file (Linux, and ``--config`` anywhere),
macOS managed preferences or a ``.mobileconfig`` payload (plistlib), and the Windows policy
key (winreg, behind an injectable reader). :func:`load_managed_config` picks this
platform's source.
"""

from __future__ import annotations

import ntpath
import plistlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

from agent.config.keys import KEYS_BY_NAME, ConfigKey, ManagedConfig
from agent.config.parse import ConfigError, parse_config, show_value, type_name
from agent.core import strict_json
from agent.platform.files import FileTooLargeError, read_capped

__all__ = [
    "DEFAULT_JSON_PATH",
    "DEFAULT_MACOS_PATH",
    "MAX_CONFIG_BYTES",
    "PREFERENCE_DOMAIN",
    "WINDOWS_POLICY_KEY",
    "RegistryReader",
    "load_config_file",
    "load_json_file",
    "load_macos_preferences",
    "load_managed_config",
    "load_windows_policy",
    "parse_json_config",
    "parse_plist_config",
    "parse_registry_values",
]

PREFERENCE_DOMAIN = "com.pullgate.agent"
DEFAULT_JSON_PATH = Path("/etc/pullgate/config.json")
DEFAULT_MACOS_PATH = Path("/Library/Managed Preferences") / f"{PREFERENCE_DOMAIN}.plist"
WINDOWS_POLICY_KEY = r"HKLM\SOFTWARE\Policies\Pullgate"
# A config file is a few hundred bytes; the cap keeps a wrong path (a log, a disk image)
# from being read into memory.
MAX_CONFIG_BYTES = 1024 * 1024

# Registry value types (winreg constants, repeated so the adapter is testable anywhere).
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7
REG_QWORD = 11
_REG_NAMES = {
    REG_SZ: "REG_SZ",
    REG_EXPAND_SZ: "REG_EXPAND_SZ",
    REG_BINARY: "REG_BINARY",
    REG_DWORD: "REG_DWORD",
    REG_MULTI_SZ: "REG_MULTI_SZ",
    REG_QWORD: "REG_QWORD",
}


def parse_json_config(data: bytes, source: str) -> ManagedConfig:
    """Strict JSON (UTF-8, one object, no duplicate keys, no NaN) into a config."""
    try:
        document = strict_json.loads(data)
    except strict_json.StrictJSONError as e:
        text = str(e)
        raise ConfigError(
            source, None, text if text.startswith("not UTF-8") else f"not valid JSON: {text}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            source, None, f"expected a JSON object of settings, got {type_name(document)}"
        )
    return parse_config(document, source)


def _read_capped(path: Path, source: str) -> bytes:
    try:
        return read_capped(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise ConfigError(source, None, f"cannot read: {e.strerror or e}") from None
    except FileTooLargeError:
        raise ConfigError(
            source, None, f"larger than {MAX_CONFIG_BYTES} bytes; wrong file?"
        ) from None


def load_json_file(path: Path) -> ManagedConfig:
    """The JSON config file (Linux, or ``--config`` anywhere). A missing file is an error."""
    return parse_json_config(_read_capped(path, str(path)), str(path))


def _is_bookkeeping(name: object) -> bool:
    """``PayloadUUID`` and friends describe the profile, they are not settings."""
    return isinstance(name, str) and name.startswith("Payload")


def _mcx_settings(payload: Mapping[str, Any], source: str) -> list[Mapping[str, Any]]:
    """Settings from the older ``com.apple.ManagedClient.preferences`` (MCX) payload form."""
    content = payload.get("PayloadContent")
    if not isinstance(content, dict) or PREFERENCE_DOMAIN not in content:
        return []
    domain = content[PREFERENCE_DOMAIN]
    forced = domain.get("Forced") if isinstance(domain, dict) else None
    if not isinstance(forced, list):
        raise ConfigError(source, None, f"MCX payload for {PREFERENCE_DOMAIN} has no Forced list")
    found: list[Mapping[str, Any]] = []
    for entry in forced:
        settings = entry.get("mcx_preference_settings") if isinstance(entry, dict) else None
        if not isinstance(settings, dict):
            raise ConfigError(source, None, "MCX Forced entry without mcx_preference_settings")
        found.append(settings)
    return found


def parse_plist_config(data: bytes, source: str) -> ManagedConfig:
    """A managed-preferences plist, or a ``.mobileconfig`` holding a Pullgate payload."""
    if data[:1] == b"\x30":
        # DER: a signed profile (CMS). Once installed, macOS writes the plain managed
        # preferences plist, which is what the agent reads.
        raise ConfigError(
            source,
            None,
            "a signed profile cannot be read directly; install it, or check the unsigned "
            "profile before signing",
        )
    try:
        document = plistlib.loads(data)
    except (
        plistlib.InvalidFileException,
        ExpatError,
        ValueError,
        TypeError,
        LookupError,
        RecursionError,  # a binary plist nested past the stack
        OverflowError,
    ) as e:
        raise ConfigError(source, None, f"not a valid property list: {e}") from None
    if not isinstance(document, dict):
        raise ConfigError(source, None, "expected a dictionary of settings")
    content = document.get("PayloadContent")
    if document.get("PayloadType") == "Configuration" or isinstance(content, list):
        if not isinstance(content, list):
            raise ConfigError(source, None, "profile without a PayloadContent list")
        matches: list[Mapping[str, Any]] = []
        for payload in content:
            if not isinstance(payload, dict):
                continue
            if payload.get("PayloadType") == PREFERENCE_DOMAIN:
                matches.append(payload)
            elif payload.get("PayloadType") == "com.apple.ManagedClient.preferences":
                matches.extend(_mcx_settings(payload, source))
        if not matches:
            raise ConfigError(
                source, None, f"the profile has no payload of type {PREFERENCE_DOMAIN!r}"
            )
        if len(matches) > 1:
            # Two payloads could disagree; macOS would merge them unpredictably.
            raise ConfigError(
                source, None, f"the profile has {len(matches)} {PREFERENCE_DOMAIN} payloads"
            )
        document = dict(matches[0])
    settings = {k: v for k, v in document.items() if not _is_bookkeeping(k)}
    return parse_config(settings, source)


def load_macos_preferences(path: Path = DEFAULT_MACOS_PATH) -> ManagedConfig:
    """macOS managed preferences for ``com.pullgate.agent``, or a ``.mobileconfig`` file."""
    return parse_plist_config(_read_capped(path, str(path)), str(path))


RegistryReader = Callable[[], Mapping[str, tuple[object, int]] | None]


if sys.platform == "win32":
    import winreg

    def _winreg_reader() -> Mapping[str, tuple[object, int]] | None:
        """All values under the policy key, or ``None`` when the key does not exist."""
        path = WINDOWS_POLICY_KEY.split("\\", 1)[1]
        try:
            # The 64-bit view: Group Policy writes there whatever Python's bitness.
            handle = winreg.OpenKey(
                winreg.HKEY_LOCAL_MACHINE, path, 0, winreg.KEY_READ | winreg.KEY_WOW64_64KEY
            )
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(WINDOWS_POLICY_KEY, None, f"cannot read: {e}") from None
        values: dict[str, tuple[object, int]] = {}
        with handle:
            index = 0
            while True:
                try:
                    name, value, kind = winreg.EnumValue(handle, index)
                except OSError:  # no more values
                    break
                values[name] = (value, kind)
                index += 1
        return values

else:

    def _winreg_reader() -> Mapping[str, tuple[object, int]] | None:
        """Elsewhere there is no registry to read: pass a reader (tests) or use --config."""
        raise ConfigError(WINDOWS_POLICY_KEY, None, "the Windows registry exists only on Windows")


def _registry_value(key: ConfigKey, value: object, kind: int) -> object:
    """One registry value as the plain value :func:`parse_config` expects."""
    kind_name = _REG_NAMES.get(kind, f"registry type {kind}")
    if key.type == "string-list":
        if kind != REG_MULTI_SZ:
            raise ValueError(f"expected REG_MULTI_SZ, got {kind_name} {show_value(value)}")
        return list(value) if isinstance(value, list | tuple) else value
    if key.type == "boolean":
        if kind != REG_DWORD or value not in (0, 1):
            raise ValueError(f"expected REG_DWORD 0 or 1, got {kind_name} {show_value(value)}")
        return bool(value)
    if key.type == "integer":
        if kind not in (REG_DWORD, REG_QWORD):
            raise ValueError(f"expected REG_DWORD, got {kind_name} {show_value(value)}")
        return value
    if key.type == "duration":
        if kind not in (REG_SZ, REG_DWORD, REG_QWORD):
            raise ValueError(
                f"expected REG_SZ (such as '12h') or REG_DWORD seconds, got {kind_name}"
            )
        return value
    if key.type == "path" and kind == REG_EXPAND_SZ and isinstance(value, str):
        # %ProgramData%\Pullgate: what REG_EXPAND_SZ is for.
        return ntpath.expandvars(value)
    if kind != REG_SZ:
        raise ValueError(f"expected REG_SZ, got {kind_name} {show_value(value)}")
    return value


def parse_registry_values(values: Mapping[str, tuple[object, int]], source: str) -> ManagedConfig:
    """Typed registry values into a config; names match case-insensitively, as in Windows."""
    plain: dict[str, object] = {}
    for name, (value, kind) in values.items():
        key = KEYS_BY_NAME.get(name) or KEYS_BY_NAME.get(name.lower())
        if key is None:
            plain[name] = value  # parse_config names it, with a did-you-mean
            continue
        if key.name in plain:
            raise ConfigError(source, key.name, f"set twice ({name!r})")
        try:
            plain[key.name] = _registry_value(key, value, kind)
        except ValueError as e:
            raise ConfigError(source, key.name, str(e)) from None
    return parse_config(plain, source)


def load_windows_policy(reader: RegistryReader | None = None) -> ManagedConfig | None:
    """``HKLM\\SOFTWARE\\Policies\\Pullgate`` (Group Policy / Intune), or ``None`` if absent.

    ``reader`` returns ``{value name: (value, registry type)}`` as ``winreg.EnumValue``
    does; tests inject one, the agent on Windows uses the real registry.
    """
    values = (reader or _winreg_reader)()
    if values is None:
        return None
    return parse_registry_values(values, WINDOWS_POLICY_KEY)


def load_managed_config(
    *,
    json_path: Path | None = None,
    platform: str = sys.platform,
    default_json_path: Path = DEFAULT_JSON_PATH,
    macos_path: Path = DEFAULT_MACOS_PATH,
    windows_reader: RegistryReader | None = None,
) -> ManagedConfig | None:
    """The managed config for this platform, or ``None`` when IT configured nothing.

    ``json_path`` (``--config``) overrides the platform source and must exist. A source
    that exists but cannot be read is an error, never "unconfigured": falling back to
    defaults would quietly drop IT's policy.
    """
    if json_path is not None:
        return load_json_file(json_path)
    if platform == "win32":
        return load_windows_policy(windows_reader)
    path = macos_path if platform == "darwin" else default_json_path
    try:
        path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(str(path), None, f"cannot read: {e.strerror or e}") from None
    if platform == "darwin":
        return load_macos_preferences(path)
    return load_json_file(path)


def load_config_file(path: Path) -> ManagedConfig:
    """Any file IT may hand over: JSON, a managed-preferences plist or a ``.mobileconfig``."""
    data = _read_capped(path, str(path))
    if path.suffix == ".json":
        return parse_json_config(data, str(path))
    return parse_plist_config(data, str(path))
