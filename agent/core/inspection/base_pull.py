"""A build's base image that is not on the machine yet, pulled by the shim first.

The daemon reads a base image's ``ONBUILD`` triggers (``COPY --from=<image>``,
``RUN --mount=from=<image>``) only once it has the image, so a base decided by its name
alone could bring a denied image in through a trigger. The shim therefore pulls an
allowed base itself (through the daemon, audited as an allowed pull made for the build)
and then decides the build with the base local, as for one already there: both the
classic builder (``GetImageAndReleasableLayer``) and BuildKit's image source
(``resolveLocal`` in resolve mode ``default``) use a local image of the name before
pulling.

Pure: which credentials dockerd's classic builder would pull with (from the build's
``X-Registry-Config``), the pull's request target, what its progress stream says, and
the refusal that tells the user to pull the base first.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from agent.core.reference import DEFAULT_DOMAIN, Reference

__all__ = [
    "INDEX_SERVER",
    "MAX_PROGRESS_LINE",
    "PULL_IDLE_SECONDS",
    "PULL_LIMIT_SECONDS",
    "PullProgress",
    "auth_for",
    "base_pull_refusal",
    "form_bool",
    "platform_matches",
    "pull_target",
    "registry_auth_header",
    "registry_configs",
]

#: The key Docker Hub's credentials are stored under (moby's ``registry.IndexServer``).
INDEX_SERVER = "https://index.docker.io/v1/"
#: A pull that sends no progress for this long is given up (the daemon is stuck, or the
#: registry stalls); the build is refused with the advice to pull first.
PULL_IDLE_SECONDS = 120.0
#: A pull is given up after this long in all, however it progresses: the build's client
#: sees nothing while the shim pulls, and ``docker pull`` shows its progress.
PULL_LIMIT_SECONDS = 900.0
#: Longest line of the daemon's progress stream the shim reads (its lines are small JSON
#: objects; a longer one means the answer is not what the shim expects).
MAX_PROGRESS_LINE = 64 * 1024


def form_bool(value: str) -> bool:
    """A query flag as dockerd reads it (``httputils.BoolValue``): anything but empty,
    ``0``, ``no``, ``false`` or ``none`` (any case, blanks trimmed) is true."""
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def registry_configs(header: str | None) -> dict[str, object]:
    """``X-Registry-Config`` as dockerd's build route reads it (``getAuthConfigs``): the
    URL-safe base64 of a JSON object, registry -> credentials. dockerd ignores what it
    cannot decode (the build then pulls without credentials), and so does this."""
    if not header:
        return {}
    try:
        raw = base64.urlsafe_b64decode(header.encode("ascii"))
        value, _ = json.JSONDecoder().raw_decode(raw.decode("utf-8").lstrip())
    except (ValueError, UnicodeError, binascii.Error):
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str)}


def _hostname(url: str) -> str:
    """moby's ``ConvertToHostname``: a legacy key (``https://host/v1/``) as a host."""
    scheme, sep, rest = url.partition("://")
    stripped = rest if sep and scheme in ("http", "https") else url
    return stripped.split("/", 1)[0]


def auth_for(configs: Mapping[str, object], reference: Reference) -> Mapping[str, object] | None:
    """The credentials dockerd's classic builder pulls ``reference`` with, out of the
    build's ``X-Registry-Config`` (moby ``resolveAuthConfig``): Docker Hub's under
    ``https://index.docker.io/v1/`` only; another registry's under its host name, else
    under the first key whose host (``ConvertToHostname``) is that name. None: none."""
    official = reference.domain == DEFAULT_DOMAIN
    key = INDEX_SERVER if official else reference.domain
    found = configs.get(key)
    if found is None and not official:
        found = next((v for k, v in configs.items() if _hostname(k) == key), None)
    return found if isinstance(found, dict) and found else None


def registry_auth_header(configs: Mapping[str, object], reference: Reference) -> str | None:
    """The ``X-Registry-Auth`` value that carries ``auth_for``'s credentials to the
    daemon's own pull (URL-safe base64 of their JSON, as the docker CLI sends it)."""
    auth = auth_for(configs, reference)
    if auth is None:
        return None
    return base64.urlsafe_b64encode(json.dumps(auth).encode("utf-8")).decode("ascii")


def pull_target(reference: Reference, platform: str = "") -> str:
    """``POST /images/create`` for ``reference`` as the builder pulls it (``TagNameOnly``:
    no tag means ``latest``; a digest is pulled by digest), for ``platform`` if given."""
    ref = reference.with_default_tag()
    tag = ref.digest or ref.tag or "latest"
    query = {"fromImage": ref.name, "tag": tag}
    if platform:
        query["platform"] = platform
    return "/images/create?" + urlencode(query)


@dataclass
class PullProgress:
    """The daemon's pull answer, read as it streams: one JSON object a line, an
    ``error`` (or ``errorDetail``) in any of them meaning the pull failed. An answer
    with an error status is one object whose ``message`` says why."""

    error: str | None = None
    message: str | None = None
    lines: int = 0
    _partial: bytes = b""

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the answer."""
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        if len(self._partial) > MAX_PROGRESS_LINE:
            self.error = self.error or "the daemon's pull progress is not readable"
            self._partial = b""
        for line in complete:
            self._line(line)

    def finish(self) -> None:
        """The answer ended: its last line may have no newline."""
        if self._partial.strip():
            self._line(self._partial)
        self._partial = b""

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        self.lines += 1
        try:
            obj = json.loads(line)
        except ValueError:
            self.error = self.error or "the daemon's pull progress is not readable"
            return
        if not isinstance(obj, dict):
            return
        detail = obj.get("errorDetail")
        error = obj.get("error")
        if error is None and isinstance(detail, dict):
            error = detail.get("message") or "error"
        if error is not None and self.error is None:
            self.error = str(error)
        if isinstance(obj.get("message"), str) and self.message is None:
            self.message = obj["message"]


def _normalized(os_name: str, arch: str, variant: str) -> tuple[str, str, str]:
    """containerd's ``platforms.Normalize`` (which BuildKit matches platforms with), save
    that an ``amd64`` variant is kept: moby 20.10 vendors a containerd that keeps
    ``amd64/v1`` (only ``x86_64`` loses its variant), later ones drop ``v1`` and keep the
    others, so only an equal variant (or none) is the same platform on every daemon."""
    os_name, arch, variant = os_name.lower(), arch.lower(), variant.lower()
    if arch == "i386":
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        variant = "" if variant in ("8", "v8") else variant
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        variant = {"": "v7", "5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant, variant)
    return os_name, arch, variant


def platform_matches(wanted: str, os_name: str, arch: str, variant: str) -> bool:
    """Whether BuildKit builds a stage for ``wanted`` (``os/arch[/variant]``) on a local
    image of that platform rather than fetching the variant (moby's builder-next
    ``platformMatches``): the same platform once normalized, or one that names no
    variant of the same OS and architecture. Stricter than BuildKit where it differs
    (it also takes older ARM variants): a mismatch only makes the shim pull the
    variant first, which BuildKit then finds local. A list of platforms never matches
    (each is built on its own variant)."""
    parts = wanted.split("/")
    if "," in wanted or not 2 <= len(parts) <= 3 or not all(parts):
        return False
    want = _normalized(parts[0], parts[1], parts[2] if len(parts) == 3 else "")
    have = _normalized(os_name, arch, variant)
    if want[:2] != have[:2]:
        return False
    return want[2] == have[2] or not variant


def base_pull_refusal(name: str, why: str) -> str:
    """Why a build whose base could not be pulled by the shim is refused, and what to do:
    ``docker pull`` goes through the shim (and is decided), and a base on the machine is
    read before the build starts."""
    return (
        f"pullgate: the build's base image {name} is not on this machine, and Pullgate "
        f"could not pull it to read its ONBUILD triggers before the build ({why}). "
        f"Run `docker pull {name}` first (Pullgate decides that pull), then build again"
    )
