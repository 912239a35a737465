"""The managed-config key registry: every setting IT can deliver, typed and documented.

One registry of typed keys (:data:`KEYS`, in the spirit of Santa's ``santaconfig.ts``)
drives everything: parsing and validation of every source (:mod:`agent.config.parse`,
:mod:`agent.config.sources`), the error messages, the generated ``docs/config.md`` and the
example MDM profiles (:mod:`agent.config.render`). Adding a setting means adding a
:class:`ConfigKey` and a :class:`ManagedConfig` field; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from agent.core.policy.trust import StaleBehavior

__all__ = [
    "KEYS",
    "KEYS_BY_NAME",
    "TYPES",
    "AuditFailure",
    "ConfigKey",
    "DesktopContext",
    "Enforcement",
    "ManagedConfig",
    "effective_enforcement",
]

TYPES = (
    "string",
    "url",
    "https-url",
    "path",
    "integer",
    "boolean",
    "duration",
    "string-list",
    "enum",
)


class AuditFailure(StrEnum):
    """What happens to pulls while the audit log cannot be written."""

    DENY = "deny"
    ALLOW = "allow"


class Enforcement(StrEnum):
    """How clients reach the agent instead of the daemon (docs/deploy/linux.md)."""

    TAKEOVER = "takeover"
    CONTEXT = "context"
    DESKTOP = "desktop"


class DesktopContext(StrEnum):
    """What the agent does to each user's docker CLI config in ``desktop`` mode."""

    ENFORCE = "enforce"
    INSTALL = "install"


TAKEOVER_UPSTREAM = "unix:///run/pullgate/dockerd.sock"
"""Where the Linux packages' drop-in for ``docker.socket`` moves dockerd's socket."""


@dataclass(frozen=True)
class ConfigKey:
    """One managed setting: everything the parser, the docs and the profiles need to know.

    ``default`` is written the way an admin would write it (``"1h"``, not a timedelta), so
    the docs show it verbatim and it goes through the same parser as a configured value.
    """

    name: str
    type: str
    default: object
    description: str
    choices: tuple[tuple[str, str], ...] = ()
    example: str | None = None
    minimum: int | None = None
    schemes: tuple[str, ...] = ()  # for ``url``: the allowed schemes
    shortest: str | None = None  # for ``duration``: the least accepted, e.g. "1m"

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: unknown config type {self.type!r}")
        if (self.type == "enum") != bool(self.choices):
            raise ValueError(f"{self.name}: choices go with type 'enum' only")
        if (self.type == "url") != bool(self.schemes):
            raise ValueError(f"{self.name}: schemes go with type 'url' only")
        if self.shortest is not None and self.type != "duration":
            raise ValueError(f"{self.name}: shortest goes with type 'duration' only")

    @property
    def summary(self) -> str:
        """The first sentence of the description, for tables and ``--help``."""
        first, _, _ = self.description.partition(". ")
        return first.rstrip(".") + "."


_MIB = 1024 * 1024

KEYS: tuple[ConfigKey, ...] = (
    ConfigKey(
        "org",
        "string",
        None,
        "The organisation's name. A signed policy is accepted only when its `org` field "
        "is exactly this value, so a validly signed policy of another organisation (or a "
        "test org signed with the same key) is refused.",
        example="acme",
    ),
    ConfigKey(
        "policy_url",
        "https-url",
        None,
        "Where the signed policy envelope is published. Any static HTTPS host will do: "
        "the agent trusts the signature, not the server. Requires `org` and "
        "`trusted_keys`. Without it the agent enforces a local `--policy` file or the "
        "built-in default policy.",
        example="https://policy.acme.example/pullgate/policy.dsse.json",
    ),
    ConfigKey(
        "ca_bundle",
        "path",
        None,
        "A PEM file of CA certificates used instead of the system CAs when fetching "
        "`policy_url` and when talking to `oidc_issuer`. Pin it when the policy host or the "
        "identity provider uses a private CA. It must exist when the "
        "agent starts; if it disappears later, each fetch fails and says so in status.",
        example="/etc/pullgate/policy-ca.pem",
    ),
    ConfigKey(
        "trusted_keys",
        "string-list",
        (),
        "Public keys allowed to sign the policy, each `ed25519:` followed by the base64 "
        "of the 32-byte raw public key (the line `pullgate admin keygen` prints). List "
        "the old and the new key while rotating. Only the canonical base64 spelling is "
        "accepted (standard alphabet, padded, unused bits zero); the error shows it.",
        example="ed25519:8/+ZRqn4A4BmO/DwtJ6Asjo9TzvEpzv978dxuzcNKg4=",
    ),
    ConfigKey(
        "key_threshold",
        "integer",
        1,
        "How many different trusted keys must have signed a policy. At most the number "
        "of `trusted_keys`.",
        example="2",
        minimum=1,
    ),
    ConfigKey(
        "refresh_interval",
        "duration",
        "1h",
        "How often the agent fetches `policy_url`. At least `1m`: a shorter interval is "
        "refused (it would hammer the policy host). Failed fetches are retried sooner, "
        "with exponential backoff and jitter; `pullgate policy refresh` fetches at once.",
        example="15m",
        shortest="1m",
    ),
    ConfigKey(
        "offline_grace",
        "duration",
        "7d",
        "How long after the policy's `expires_at` the agent keeps enforcing it as usual "
        "(a laptop may be offline for days). After that, `stale_behavior` applies.",
        example="3d",
    ),
    ConfigKey(
        "stale_behavior",
        "enum",
        StaleBehavior.ENFORCE_LAST.value,
        "What the agent does once the policy is older than `expires_at` plus "
        "`offline_grace`. It always says so in `pullgate status`, the tray and the audit "
        "log.",
        choices=(
            (
                StaleBehavior.ENFORCE_LAST.value,
                "keep enforcing the last verified policy (safe and usable offline)",
            ),
            (
                StaleBehavior.MONITOR.value,
                "allow every image and record what the last policy would have denied",
            ),
            (StaleBehavior.DENY_ALL.value, "refuse every pull until a fresh policy arrives"),
        ),
    ),
    ConfigKey(
        "policy_max_bytes",
        "integer",
        _MIB,
        "The largest policy envelope the agent downloads, in bytes (default 1 MiB, at most "
        "4 MiB: the largest envelope the agent verifies). A bigger response is refused and "
        "the current policy stays in force.",
        example="4194304",
        minimum=1024,
    ),
    ConfigKey(
        "fetch_timeout",
        "duration",
        "30s",
        "Connect timeout, and the longest wait for data, when fetching `policy_url`; a "
        "whole fetch (connect, headers and body) is limited to 3 times this. At least "
        "`1s`. A server that stalls or trickles longer counts as a failed fetch.",
        example="10s",
        shortest="1s",
    ),
    ConfigKey(
        "listen",
        "path",
        None,
        "The Docker API socket the agent serves. Default: `/run/pullgate/docker.sock` for "
        "the system service, `$XDG_RUNTIME_DIR/pullgate/docker.sock` per user.",
        example="/run/pullgate/docker.sock",
    ),
    ConfigKey(
        "upstream",
        "url",
        None,
        "The real Docker daemon, as a `unix://` URL with an absolute path. Default: "
        "discovered (`DOCKER_HOST`, the docker context, `/var/run/docker.sock`, rootless and "
        "Docker Desktop sockets).",
        example="unix:///var/run/docker.sock",
        schemes=("unix",),
    ),
    ConfigKey(
        "enforcement",
        "enum",
        Enforcement.CONTEXT.value,
        "How docker clients are made to go through the agent. With `takeover` (the Linux "
        "packages set it) dockerd's socket is moved to a root-only path and the Docker "
        "socket users know, `/var/run/docker.sock`, leads to the agent, so the agent is the "
        "only way to the daemon for anyone but root; `upstream` then defaults to "
        f"`{TAKEOVER_UPSTREAM}`. With `context` the agent serves its own socket and users "
        "are pointed at it by a docker context (`pullgate context install`): the mode for "
        "Docker Desktop and rootless Docker, where the daemon is the user's own. "
        "With `desktop` (the default of the system agent on macOS) the agent runs as root "
        "and serves one "
        "endpoint per logged-in user, `<desktop_users_dir>/<uid>/docker.sock`, in front of "
        "that user's own Docker Desktop (`~/.docker/run/docker.sock` on macOS, "
        "`~/.docker/desktop/docker.sock` on Linux), and installs a docker context for each "
        "user (`desktop_context`); `listen` and `upstream` do not apply. "
        "`pullgate doctor` reports the mode and whether anything still reaches the daemon "
        "directly.",
        choices=(
            (
                Enforcement.TAKEOVER.value,
                "the agent stands in for the daemon's socket; dockerd listens only for root",
            ),
            (Enforcement.CONTEXT.value, "users are pointed at the agent by a docker context"),
            (
                Enforcement.DESKTOP.value,
                "a system agent serves each logged-in user in front of their Docker Desktop",
            ),
        ),
    ),
    ConfigKey(
        "desktop_users_dir",
        "path",
        None,
        "In `desktop` mode, the root-owned directory holding one directory per user "
        "(by uid) with that user's endpoint socket. Default: `/var/run/pullgate/users`.",
        example="/var/run/pullgate/users",
    ),
    ConfigKey(
        "desktop_context",
        "enum",
        DesktopContext.ENFORCE.value,
        "In `desktop` mode, what the agent does to each user's docker CLI config. It always "
        "installs (and keeps up to date) a docker context named `pullgate` at the user's "
        "endpoint, written as the user. With `enforce` it also makes that context the "
        "current one whenever the user is on the default context, on one of Docker "
        "Desktop's (`desktop-linux`) or on any context that leads straight to their Docker "
        "Desktop socket, checked again whenever the user's `config.json` changes; a context "
        "of the user's to another engine is left alone. With `install` the current context "
        "is never changed.",
        choices=(
            (
                DesktopContext.ENFORCE.value,
                "select Pullgate's context instead of Docker Desktop's, again after a change",
            ),
            (DesktopContext.INSTALL.value, "install the context; never change the current one"),
        ),
    ),
    ConfigKey(
        "desktop_executables",
        "string-list",
        None,
        "In `desktop` mode, the programs that may serve a user's Docker Desktop socket "
        "(macOS and Linux). The agent forwards a user's requests to their Desktop socket, "
        "and its bypass monitor follows the events there, only when the process listening "
        "on it is the user's and runs one of these executables, from a file owned by root "
        "that neither its group nor others may write, in directories owned by root that no "
        "user may write (on macOS the admin group may, as it may write `/Applications`): "
        "any other program of the user's there could show the agent a quiet daemon while "
        "they pull another way. Otherwise the endpoint refuses to forward and the agent "
        "reports the listener (`pullgate doctor`, the audit log). Give each path as the "
        "kernel names the running program: absolute, without symbolic links. Default: "
        "`/Applications/Docker.app/Contents/MacOS/com.docker.backend` on macOS, "
        "`/opt/docker-desktop/bin/com.docker.backend` on Linux (Docker Desktop's backend, "
        "as Docker's installers place it). A Docker.app a user dragged into "
        "`/Applications` is that user's and is refused: install Docker Desktop as root "
        "(Docker's pkg, an MDM, or its `install` command run with sudo).",
        example="/opt/docker-desktop/bin/com.docker.backend",
    ),
    ConfigKey(
        "oidc_issuer",
        "https-url",
        None,
        "The organisation's OpenID Connect issuer (Okta, Entra ID, Google, Keycloak, ...), "
        "used for `pullgate login`. Requires `oidc_client_id`.",
        example="https://acme.okta.com/oauth2/default",
    ),
    ConfigKey(
        "oidc_client_id",
        "string",
        None,
        "The public OIDC client registered for Pullgate (device authorization flow). "
        "Requires `oidc_issuer`.",
        example="0oa1pullgate",
    ),
    ConfigKey(
        "allowed_domains",
        "string-list",
        (),
        "Email domains whose users may sign in; empty allows any identity the issuer "
        "vouches for. Requires `oidc_issuer`.",
        example="acme.example",
    ),
    ConfigKey(
        "oidc_scopes",
        "string-list",
        ("openid", "email", "profile", "offline_access"),
        "The scopes `pullgate login` asks for. Must include `openid`; `offline_access` gives "
        "the refresh token that keeps users signed in silently. Add the scope your provider "
        "needs for the groups claim (Okta: `groups`; Entra ID and Google need none).",
        example="openid",
    ),
    ConfigKey(
        "oidc_groups_claim",
        "string",
        "groups",
        "The ID token claim that lists the user's groups (matched against the policy's "
        "rule `groups`). A claim that is missing means no groups; one that is not a list "
        "of strings refuses the token.",
        example="groups",
    ),
    ConfigKey(
        "identity_max_age",
        "duration",
        "8h",
        "How long the agent keeps a user's sign-in after the last ID token it accepted for "
        "them. The user's sign-in client (the tray, or `pullgate login`) renews it silently "
        "with its refresh token before then. At least `5m`.",
        example="12h",
        shortest="5m",
    ),
    ConfigKey(
        "sign_in_methods",
        "string-list",
        ("device", "browser"),
        "How users may sign in: `device` (RFC 8628 device flow, the default of `pullgate "
        "login`) and `browser` (authorization code + PKCE with a loopback redirect, "
        "`pullgate login --browser`). Register the client for the grants listed here.",
        example="device",
    ),
    ConfigKey(
        "audit_dir",
        "path",
        None,
        "Directory of the audit log. Default: `/var/log/pullgate` for the system service, "
        "the user's state directory per user.",
        example="/var/log/pullgate",
    ),
    ConfigKey(
        "audit_failure",
        "enum",
        AuditFailure.DENY.value,
        "What happens to pulls while the audit log cannot be written (disk full, "
        "permissions). Either way the agent keeps serving and reports the failure loudly.",
        choices=(
            (AuditFailure.DENY.value, "refuse pulls that cannot be recorded"),
            (AuditFailure.ALLOW.value, "decide pulls as usual without a record"),
        ),
    ),
    ConfigKey(
        "audit_rotate_bytes",
        "integer",
        64 * _MIB,
        "Size in bytes at which the audit log is rotated to a new file (default 64 MiB). "
        "The hash chain continues across files.",
        example="134217728",
        minimum=_MIB,
    ),
    ConfigKey(
        "audit_keep_files",
        "integer",
        10,
        "How many rotated audit files are kept besides the current one.",
        example="30",
        minimum=1,
    ),
    ConfigKey(
        "audit_native_log",
        "boolean",
        True,
        "Also write a one-line summary of each audit record to the system log (journald "
        "or syslog, the macOS unified log, the Windows event log).",
        example="false",
    ),
    ConfigKey(
        "help_url",
        "url",
        None,
        "Where a denial message sends the user when the policy names no help page. May "
        "contain `{image}`, `{category}`, `{rule}`, `{user}` and `{host}`.",
        example="https://it.acme.example/containers?image={image}",
        schemes=("https", "http"),
    ),
)

KEYS_BY_NAME: dict[str, ConfigKey] = {key.name: key for key in KEYS}


@dataclass(frozen=True)
class ManagedConfig:
    """The effective managed config: one typed field per key, defaults applied."""

    org: str | None = None
    policy_url: str | None = None
    ca_bundle: Path | None = None
    trusted_keys: tuple[str, ...] = ()
    key_threshold: int = 1
    refresh_interval: timedelta = timedelta(hours=1)
    offline_grace: timedelta = timedelta(days=7)
    stale_behavior: StaleBehavior = StaleBehavior.ENFORCE_LAST
    policy_max_bytes: int = _MIB
    fetch_timeout: timedelta = timedelta(seconds=30)
    listen: Path | None = None
    upstream: str | None = None
    enforcement: Enforcement = Enforcement.CONTEXT
    desktop_users_dir: Path | None = None
    desktop_context: DesktopContext = DesktopContext.ENFORCE
    desktop_executables: tuple[str, ...] | None = None  # None: the platform's default
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    allowed_domains: tuple[str, ...] = ()
    oidc_scopes: tuple[str, ...] = ("openid", "email", "profile", "offline_access")
    oidc_groups_claim: str = "groups"
    identity_max_age: timedelta = timedelta(hours=8)
    sign_in_methods: tuple[str, ...] = ("device", "browser")
    audit_dir: Path | None = None
    audit_failure: AuditFailure = AuditFailure.DENY
    audit_rotate_bytes: int = 64 * _MIB
    audit_keep_files: int = 10
    audit_native_log: bool = True
    help_url: str | None = None
    source: str = "defaults"
    # Which keys the source set explicitly, so status and doctor can tell IT's choices
    # from defaults.
    set_keys: frozenset[str] = field(default=frozenset())

    @property
    def upstream_path(self) -> Path | None:
        """The daemon socket path of ``upstream`` (validated as ``unix:///abs/path``)."""
        return Path(self.upstream[len("unix://") :]) if self.upstream else None


def effective_enforcement(
    config: ManagedConfig | None, *, platform: str, system: bool
) -> Enforcement:
    """The mode an agent runs in: the managed config's ``enforcement`` when it sets one;
    else ``desktop`` for the system agent on macOS (the pkg's LaunchDaemon has no other
    way to its users' daemons), else ``context``. ``system``: the agent runs as root."""
    if config is not None and "enforcement" in config.set_keys:
        return config.enforcement
    if platform == "darwin" and system:
        return Enforcement.DESKTOP
    return config.enforcement if config is not None else Enforcement.CONTEXT
