"""ADMX/ADML templates of the key registry, for Group Policy and Intune.

:func:`render_admx` and :func:`render_adml` turn :data:`~agent.config.keys.KEYS` into the
administrative template ``Pullgate.admx`` and its language file ``Pullgate.adml``: one
category, one machine policy per key under ``HKLM\\SOFTWARE\\Policies\\Pullgate`` with the
key's name as the value name, so Group Policy and Intune write exactly what
:func:`agent.config.sources.parse_registry_values` reads:

==============================  ======================  ==================================
key type                        ADMX element            registry value
==============================  ======================  ==================================
string, url, https-url, duration ``text``               REG_SZ (a duration as ``12h``)
path                            ``text expandable``     REG_EXPAND_SZ (``%ProgramData%``)
integer                         ``decimal``             REG_DWORD, from the key's minimum
boolean                         ``boolean``             REG_DWORD 1 / 0
enum                            ``enum``                REG_SZ, one of the choices
string-list                     ``multiText``           REG_MULTI_SZ
==============================  ======================  ==================================

A list is ``multiText``, never ADMX's ``list`` element: ``list`` writes one value per item
under a *subkey*, which the reader does not look at, so the setting would be lost
silently. The templates are self-contained (their own ``supportedOn`` definition, no
reference to ``windows.admx``), which Intune's ADMX ingestion needs.

Pure: imports :mod:`agent.config.keys` only; ``python -m agent.config --admx DIR`` writes
the files, and ``packaging/windows/PolicyDefinitions/`` holds the committed copies (a test
keeps them in step with the registry).
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from agent.config.keys import KEYS, ConfigKey

__all__ = [
    "ADMX_NAMESPACE",
    "ADMX_PREFIX",
    "CATEGORY",
    "ELEMENTS",
    "POLICY_KEY",
    "REVISION",
    "render_adml",
    "render_admx",
]

POLICY_KEY = r"SOFTWARE\Policies\Pullgate"
"""Under HKEY_LOCAL_MACHINE: the key agent.config.sources.WINDOWS_POLICY_KEY reads."""
ADMX_NAMESPACE = "Pullgate.Policies.Pullgate"
ADMX_PREFIX = "pullgate"
CATEGORY = "Pullgate"
SUPPORTED_ON = "SUPPORTED_Pullgate"
REVISION = "1.0"
DWORD_MAX = 0xFFFFFFFF
TEXT_MAX_LENGTH = 2048
MULTI_TEXT_MAX_LENGTH = 8192

ELEMENTS: dict[str, str] = {
    "string": "text",
    "url": "text",
    "https-url": "text",
    "path": "text",
    "duration": "text",
    "integer": "decimal",
    "boolean": "boolean",
    "enum": "enum",
    "string-list": "multiText",
}
"""The ADMX element of each key type (every type of agent.config.keys.TYPES)."""

_REG_TYPES = {
    "text": "REG_SZ",
    "decimal": "REG_DWORD",
    "boolean": "REG_DWORD 1 or 0",
    "enum": "REG_SZ",
    "multiText": "REG_MULTI_SZ",
}

_HEADER = '<?xml version="1.0" encoding="utf-8"?>'
_SCHEMA = (
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns="http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions"'
)


def _id(*parts: str) -> str:
    """A string or element id: letters, digits and underscores."""
    return "_".join(p.replace("-", "_").replace(".", "_") for p in parts)


def _plain(text: str) -> str:
    """Descriptions are Markdown in docs/config.md; the Group Policy editor shows text."""
    return text.replace("`", "")


def _element(key: ConfigKey) -> list[str]:
    """The policy's ``<elements>`` child for ``key``, one line per list item."""
    kind = ELEMENTS[key.type]
    attrs = f"id={quoteattr(key.name)} valueName={quoteattr(key.name)}"
    if kind == "text":
        expandable = ' expandable="true"' if key.type == "path" else ""
        return [f'<text {attrs} required="true" maxLength="{TEXT_MAX_LENGTH}"{expandable} />']
    if kind == "decimal":
        minimum = key.minimum if key.minimum is not None else 0
        return [f'<decimal {attrs} required="true" minValue="{minimum}" maxValue="{DWORD_MAX}" />']
    if kind == "boolean":
        return [
            f"<boolean {attrs}>",
            '  <trueValue><decimal value="1" /></trueValue>',
            '  <falseValue><decimal value="0" /></falseValue>',
            "</boolean>",
        ]
    if kind == "enum":
        lines = [f'<enum {attrs} required="true">']
        for value, _ in key.choices:
            lines += [
                f'  <item displayName="$(string.{_id(key.name, value)})">',
                f"    <value><string>{escape(value)}</string></value>",
                "  </item>",
            ]
        return [*lines, "</enum>"]
    return [
        f'<multiText {attrs} required="true" maxLength="{MULTI_TEXT_MAX_LENGTH}" maxStrings="0" />'
    ]


def render_admx() -> str:
    """``Pullgate.admx``: the category and one machine policy per registry key."""
    out = [
        _HEADER,
        # No double hyphen in an XML comment: the option is named, not spelled.
        "<!-- Generated by agent/config/admx.py (python -m agent.config, option admx) from "
        "the key registry in agent/config/keys.py. Do not edit by hand: "
        "tests/test_packaging_windows.py fails when this file and the registry differ. -->",
        f'<policyDefinitions {_SCHEMA} revision="{REVISION}" schemaVersion="1.0">',
        "  <policyNamespaces>",
        f'    <target prefix="{ADMX_PREFIX}" namespace="{ADMX_NAMESPACE}" />',
        "  </policyNamespaces>",
        f'  <resources minRequiredRevision="{REVISION}" />',
        "  <supportedOn>",
        "    <definitions>",
        f'      <definition name="{SUPPORTED_ON}" displayName="$(string.{SUPPORTED_ON})" />',
        "    </definitions>",
        "  </supportedOn>",
        "  <categories>",
        f'    <category name="{CATEGORY}" displayName="$(string.{CATEGORY})"'
        f' explainText="$(string.{CATEGORY}_Help)" />',
        "  </categories>",
        "  <policies>",
    ]
    for key in KEYS:
        out += [
            f'    <policy name={quoteattr(key.name)} class="Machine"'
            f' displayName="$(string.{key.name})" explainText="$(string.{key.name}_Help)"'
            f' presentation="$(presentation.{key.name})" key={quoteattr(POLICY_KEY)}>',
            f'      <parentCategory ref="{CATEGORY}" />',
            f'      <supportedOn ref="{SUPPORTED_ON}" />',
            "      <elements>",
            *(f"        {line}" for line in _element(key)),
            "      </elements>",
            "    </policy>",
        ]
    out += ["  </policies>", "</policyDefinitions>"]
    return "\n".join(out) + "\n"


def _default_text(key: ConfigKey) -> str:
    if key.default is None:
        return "not set"
    if key.default == ():
        return "empty"
    if isinstance(key.default, bool):
        return "checked (1)" if key.default else "unchecked (0)"
    if isinstance(key.default, tuple):
        return ", ".join(str(item) for item in key.default)
    return str(key.default)


def _explain(key: ConfigKey) -> str:
    """The help text beside the policy: description, values, default, registry value."""
    kind = ELEMENTS[key.type]
    parts = [_plain(key.description)]
    if key.choices:
        parts.append("\n".join(f"{value}: {meaning}" for value, meaning in key.choices))
    if key.type == "duration":
        parts.append(
            "A duration is a number with a unit (ms, s, m, h, d or w), or several (1h30m)"
            + (f"; at least {key.shortest}." if key.shortest else ".")
        )
    if key.type == "string-list":
        parts.append("One item per line.")
    if key.type == "path":
        parts.append(r"An absolute path; environment variables such as %ProgramData% expand.")
    if key.type == "url":
        parts.append("URL schemes: " + ", ".join(f"{s}://" for s in key.schemes) + ".")
    if key.type == "https-url":
        parts.append("An https:// URL.")
    reg_type = "REG_EXPAND_SZ" if key.type == "path" else _REG_TYPES[kind]
    parts.append(
        f"Not configured: {_default_text(key)}.\n"
        f"Registry: HKLM\\{POLICY_KEY}\\{key.name} ({reg_type})."
    )
    return "\n\n".join(parts)


def _presentation(key: ConfigKey) -> list[str]:
    kind = ELEMENTS[key.type]
    ref = f"refId={quoteattr(key.name)}"
    label = f"{escape(key.name)}:"
    if kind == "text":
        default = (
            f"<defaultValue>{escape(key.default)}</defaultValue>"
            if isinstance(key.default, str)
            else ""
        )
        return [f"<textBox {ref}><label>{label}</label>{default}</textBox>"]
    if kind == "decimal":
        number = key.default if isinstance(key.default, int) else (key.minimum or 0)
        return [f'<decimalTextBox {ref} defaultValue="{number}">{label}</decimalTextBox>']
    if kind == "boolean":
        checked = "true" if key.default is True else "false"
        return [f'<checkBox {ref} defaultChecked="{checked}">{label}</checkBox>']
    if kind == "enum":
        values = [value for value, _ in key.choices]
        index = values.index(str(key.default)) if key.default in values else 0
        return [f'<dropdownList {ref} defaultItem="{index}" noSort="true">{label}</dropdownList>']
    return [f"<multiTextBox {ref}>{label}</multiTextBox>"]


def render_adml(language: str = "en-US") -> str:
    """``Pullgate.adml`` for ``language``: display names, help texts and the dialogs.

    The registry's texts are English: ``en-US`` is the one language there is; the ADML
    goes in the ``PolicyDefinitions`` subdirectory named after it.
    """
    if language != "en-US":
        raise ValueError(f"no texts for {language!r}: the key registry is written in en-US")
    strings: list[tuple[str, str]] = [
        (CATEGORY, "Pullgate"),
        (
            f"{CATEGORY}_Help",
            "Pullgate: the organisation's container image policy on this machine. Each "
            f"setting is a value under HKLM\\{POLICY_KEY}, read by the Pullgate agent "
            "when it starts.",
        ),
        (SUPPORTED_ON, "Windows 10 and later with the Pullgate agent installed"),
    ]
    for key in KEYS:
        strings += [(key.name, key.name), (f"{key.name}_Help", _explain(key))]
        strings += [(_id(key.name, value), value) for value, _ in key.choices]
    out = [
        _HEADER,
        "<!-- Generated by agent/config/admx.py (python -m agent.config, option admx) from "
        "the key registry in agent/config/keys.py. Do not edit by hand. -->",
        f'<policyDefinitionResources {_SCHEMA} revision="{REVISION}" schemaVersion="1.0">',
        "  <displayName>Pullgate</displayName>",
        "  <description>Managed settings of the Pullgate agent</description>",
        "  <resources>",
        "    <stringTable>",
        *(f"      <string id={quoteattr(sid)}>{escape(text)}</string>" for sid, text in strings),
        "    </stringTable>",
        "    <presentationTable>",
    ]
    for key in KEYS:
        out += [
            f"      <presentation id={quoteattr(key.name)}>",
            *(f"        {line}" for line in _presentation(key)),
            "      </presentation>",
        ]
    out += ["    </presentationTable>", "  </resources>", "</policyDefinitionResources>"]
    return "\n".join(out) + "\n"
