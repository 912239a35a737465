"""Container image references, parsed exactly as ``distribution/reference`` parses them.

Policy, audit and UI all share this one model, so a name that Docker would resolve to
one repository can never be read as another by Pullgate. The grammar and the
behaviour of ``Parse``, ``ParseNamed``, ``ParseNormalizedNamed``, ``ParseAnyReference``,
``ParseDockerRef``, ``FamiliarString`` and friends follow the Go module (v0.6); its own
test tables run against this module (``tests/test_reference_upstream.py``).

The Go implementation is one large regular expression. Python's backtracking engine can
take quadratic time on such a pattern with hostile input, so the reference is split at
its unambiguous delimiters first (``@`` for the digest, the last ``:`` after the last
``/`` for the tag, the first ``/`` for the domain) and only short, linear patterns are
matched per part. The split is exact: a tag holds no ``:`` or ``/``, a path no ``:``, a
domain no ``/``, and no part but the digest holds ``@``.

On top of the upstream semantics, :func:`hub_view` folds every Docker Hub alias
(``docker.io``, ``index.docker.io``, ``registry-1.docker.io``,
``registry.hub.docker.com``, any letter case, optional ``:443``) into ``docker.io`` for
policy purposes: a real bypass of Docker's own IAM used such an alias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = [
    "DEFAULT_DOMAIN",
    "DOCKER_HUB_ALIASES",
    "NAME_TOTAL_LENGTH_MAX",
    "DigestInvalidFormatError",
    "DigestReference",
    "InvalidReferenceFormatError",
    "NameContainsUppercaseError",
    "NameEmptyError",
    "NameNotCanonicalError",
    "NameTooLongError",
    "Reference",
    "ReferenceError",
    "TagInvalidFormatError",
    "familiar_match",
    "hub_view",
    "is_docker_hub",
    "parse",
    "parse_any_reference",
    "parse_digest",
    "parse_docker_ref",
    "parse_named",
    "parse_normalized_named",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

#: Hosts that serve Docker Hub. ``ParseNormalizedNamed`` only folds ``index.docker.io``;
#: policy must treat all of them (and their ``:443`` forms) as Docker Hub.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)


class ReferenceError(ValueError):
    """An image name that is not a valid reference. Subclasses name the upstream error."""

    upstream = "ErrReferenceInvalidFormat"


class InvalidReferenceFormatError(ReferenceError):
    """``ErrReferenceInvalidFormat``: the string does not match the reference grammar."""

    upstream = "ErrReferenceInvalidFormat"


class TagInvalidFormatError(ReferenceError):
    """``ErrTagInvalidFormat``."""

    upstream = "ErrTagInvalidFormat"


class DigestInvalidFormatError(ReferenceError):
    """``ErrDigestInvalidFormat`` and the digest package's errors (length, algorithm)."""

    upstream = "ErrDigestInvalidFormat"


class NameContainsUppercaseError(ReferenceError):
    """``ErrNameContainsUppercase``: repository paths must be lowercase."""

    upstream = "ErrNameContainsUppercase"


class NameEmptyError(ReferenceError):
    """``ErrNameEmpty``."""

    upstream = "ErrNameEmpty"


class NameTooLongError(ReferenceError):
    """``ErrNameTooLong``: the repository path exceeds 255 characters."""

    upstream = "ErrNameTooLong"


class NameNotCanonicalError(ReferenceError):
    """``ErrNameNotCanonical``: ``parse_named`` was given a familiar (non-canonical) name."""

    upstream = "ErrNameNotCanonical"


class PatternError(ReferenceError):
    """``path.ErrBadPattern`` from ``familiar_match``."""

    upstream = "ErrBadPattern"


# --- grammar (regexp.go), ASCII only: Go's \w and [[:xdigit:]] are ASCII classes -------
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = r"(?:" + _DOMAIN_NAME + r"|" + _IPV6 + r")"
_DOMAIN_AND_PORT = _HOST + r"(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT)
_DOMAIN_RE = re.compile(_DOMAIN_AND_PORT)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")

# go-digest: the algorithms linked into Docker, with their hex lengths.
_DIGEST_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_ENCODED_RE = re.compile(r"[a-f0-9]+")
_GO_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


def _fullmatch(pattern: re.Pattern[str], s: str) -> bool:
    return pattern.fullmatch(s) is not None


def _is_remote_name(s: str) -> bool:
    """``remoteName``: path components separated by single slashes."""
    return all(_fullmatch(_PATH_COMPONENT_RE, part) for part in s.split("/"))


def _split_name(name: str) -> tuple[str, str] | None:
    """Match ``[domainAndPort "/"] remoteName``, preferring a domain as Go's regexp does.

    Returns ``(domain, path)`` with domain ``""`` when there is none, or None when the
    string is not a name at all.
    """
    first, slash, rest = name.partition("/")
    if slash and _fullmatch(_DOMAIN_RE, first) and _is_remote_name(rest):
        return first, rest
    if _is_remote_name(name):
        return "", name
    return None


@dataclass(frozen=True)
class _Match:
    name: str
    domain: str
    path: str
    tag: str
    digest: str


def _match_reference(s: str) -> _Match | None:
    """``ReferenceRegexp`` as a structural match; None when ``s`` is not a reference."""
    name_and_tag, at, digest = s.partition("@")
    if at and not _fullmatch(_DIGEST_RE, digest):
        return None
    tag = ""
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        name_and_tag, tag = name_and_tag[:colon], name_and_tag[colon + 1 :]
        if not _fullmatch(_TAG_RE, tag):
            return None
    split = _split_name(name_and_tag)
    if split is None:
        return None
    return _Match(name_and_tag, split[0], split[1], tag, digest)


def _validate_digest(d: str) -> str:
    """``digest.Parse`` from go-digest: the algorithm must be known and the hex exact."""
    algorithm, colon, encoded = d.partition(":")
    if not colon or not algorithm or not encoded:
        raise DigestInvalidFormatError(f"invalid digest {d!r}: expected ALGORITHM:HEX")
    expected = _DIGEST_ALGORITHMS.get(algorithm)
    if expected is None:
        if not _fullmatch(_GO_DIGEST_RE, d):
            raise DigestInvalidFormatError(f"invalid digest {d!r}: invalid format")
        raise DigestInvalidFormatError(
            f"unsupported digest algorithm {algorithm!r} in {d!r}: "
            f"expected one of {', '.join(_DIGEST_ALGORITHMS)}"
        )
    if len(encoded) != expected:
        raise DigestInvalidFormatError(
            f"invalid digest {d!r}: {algorithm} needs {expected} hex characters, got {len(encoded)}"
        )
    if not _fullmatch(_DIGEST_ENCODED_RE, encoded):
        raise DigestInvalidFormatError(
            f"invalid digest {d!r}: the hex part must be lowercase 0-9a-f"
        )
    return d


@dataclass(frozen=True)
class Reference:
    """A named image reference: ``[domain/]path[:tag][@digest]``.

    ``domain`` is ``""`` only for references from :func:`parse`, which, like the Go
    ``Parse``, does not normalise. Everything Pullgate decides on comes from
    :func:`parse_normalized_named`, whose references always have a domain.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``Name()``: domain and path."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        """``String()``: the full reference, without implying a tag."""
        out = self.name
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out

    def familiar_name(self) -> str:
        """``FamiliarName``: the short form people type (``ubuntu``, ``user/app``)."""
        domain, path = self.domain, self.path
        if domain == DEFAULT_DOMAIN:
            domain = ""
            if path.startswith(OFFICIAL_REPO_PREFIX):
                remainder = path[len(OFFICIAL_REPO_PREFIX) :]
                if "/" not in remainder:
                    path = remainder
        return f"{domain}/{path}" if domain else path

    def familiar_string(self) -> str:
        """``FamiliarString``: the familiar name with tag and digest."""
        out = self.familiar_name()
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out

    def with_default_tag(self) -> Reference:
        """``TagNameOnly``: a reference with neither tag nor digest means ``:latest``."""
        if self.tag is None and self.digest is None:
            return Reference(self.domain, self.path, DEFAULT_TAG)
        return self

    @property
    def canonical(self) -> str:
        """The form Pullgate shows and records: normalised, with the implied tag."""
        return str(self.with_default_tag())

    def with_tag(self, tag: str) -> Reference:
        """``WithTag``: the same repository with another tag (and any digest kept)."""
        if not _fullmatch(_TAG_RE, tag):
            raise TagInvalidFormatError(f"invalid tag {tag!r}: {_describe_tag_problem(tag)}")
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        """``WithDigest``: the same repository pinned to ``digest`` (any tag kept)."""
        if not _fullmatch(_DIGEST_RE, digest):
            raise DigestInvalidFormatError(
                f"invalid digest {digest!r}: expected ALGORITHM:HEX (at least 32 hex digits)"
            )
        return replace(self, digest=digest)

    def trimmed(self) -> Reference:
        """``TrimNamed``: only the repository."""
        return Reference(self.domain, self.path)


@dataclass(frozen=True)
class DigestReference:
    """A bare digest, as ``ParseAnyReference`` returns for ``sha256:...`` or an image ID."""

    digest: str

    def __str__(self) -> str:
        return self.digest


def _describe_tag_problem(tag: str) -> str:
    if not tag:
        return "a tag cannot be empty"
    if len(tag) > 128:
        return f"a tag is at most 128 characters, got {len(tag)}"
    if not re.fullmatch(r"[A-Za-z0-9_]", tag[0]):
        return "a tag must start with a letter, digit or underscore"
    return "a tag may only hold letters, digits, '_', '.' and '-'"


def _describe_component_problem(component: str) -> str:
    """Say, for a person, what is wrong with one path component."""
    if not component:
        return "empty path component (a leading, trailing or doubled '/')"
    if component != component.lower():
        return f"path component {component!r} must be lowercase"
    if not component[0].isascii() or not component[0].isalnum():
        return f"path component {component!r} must start with a lowercase letter or digit"
    if not component[-1].isascii() or not component[-1].isalnum():
        return f"path component {component!r} must end with a lowercase letter or digit"
    bad = sorted({c for c in component if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"path component {component!r} contains {shown}; allowed: a-z 0-9 . _ -"
    return (
        f"path component {component!r} has a bad separator: use one '.', one or two '_', "
        "or dashes between letters and digits"
    )


def _explain(s: str) -> str:
    """A one-line reason why ``s`` does not match the grammar, for error messages."""
    if s != s.strip() or any(c.isspace() for c in s):
        return "it contains whitespace"
    name_and_tag, at, digest = s.partition("@")
    if at:
        if "@" in digest:
            return "it contains more than one '@'"
        if not _fullmatch(_DIGEST_RE, digest):
            return f"digest {digest!r} is not ALGORITHM:HEX with at least 32 hex digits"
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        tag = name_and_tag[colon + 1 :]
        if not _fullmatch(_TAG_RE, tag):
            return f"tag {tag!r} is invalid: {_describe_tag_problem(tag)}"
        name_and_tag = name_and_tag[:colon]
    if not name_and_tag:
        return "the repository name is empty"
    first, slash, rest = name_and_tag.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _fullmatch(_DOMAIN_RE, first):
            return f"registry host {first!r} is not a valid host[:port]"
        components = rest.split("/")
    else:
        components = name_and_tag.split("/")
    for component in components:
        if not _fullmatch(_PATH_COMPONENT_RE, component):
            return _describe_component_problem(component)
    return "it does not match NAME[:TAG][@DIGEST]"


def parse(s: str) -> Reference:
    """``reference.Parse``: validate against the grammar without normalising."""
    return _parse(s, s)


def _parse(s: str, shown: str) -> Reference:
    """``Parse`` of ``s``; errors quote ``shown``, the string the person typed."""
    m = _match_reference(s)
    if m is None:
        if s == "":
            raise NameEmptyError("invalid reference format: the image name is empty")
        if _match_reference(s.lower()) is not None:
            raise NameContainsUppercaseError(
                f"invalid reference format: repository name {shown!r} must be lowercase"
            )
        raise InvalidReferenceFormatError(f"invalid reference format {shown!r}: {_explain(s)}")
    if len(m.path) > NAME_TOTAL_LENGTH_MAX:
        raise NameTooLongError(
            f"repository path of {shown!r} must not be more than {NAME_TOTAL_LENGTH_MAX} "
            f"characters, got {len(m.path)}"
        )
    digest = _validate_digest(m.digest) if m.digest else None
    return Reference(m.domain, m.path, m.tag or None, digest)


def parse_named(s: str) -> Reference:
    """``reference.ParseNamed``: accept only an already canonical name."""
    ref = parse_normalized_named(s)
    if str(ref) != s:
        raise NameNotCanonicalError(
            f"repository name must be canonical: {s!r} normalises to {str(ref)!r}"
        )
    return ref


def _split_docker_domain(name: str) -> tuple[str, str]:
    """``splitDockerDomain``: decide whether the first component names a registry."""
    maybe_domain, slash, maybe_remote = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + name
    if maybe_domain == "localhost":
        domain, remote = maybe_domain, maybe_remote
    elif maybe_domain == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, maybe_remote
    elif "." in maybe_domain or ":" in maybe_domain:
        domain, remote = maybe_domain, maybe_remote
    elif maybe_domain.lower() != maybe_domain:
        # Docker Hub namespaces are lowercase, so an uppercase first part is a host.
        domain, remote = maybe_domain, maybe_remote
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_REPO_PREFIX + remote
    return domain, remote


def parse_normalized_named(s: str) -> Reference:
    """``reference.ParseNormalizedNamed``: what ``docker pull s`` would fetch.

    ``ubuntu`` becomes ``docker.io/library/ubuntu``; ``index.docker.io`` becomes
    ``docker.io``; a bare 64-hex string is refused because Docker reads it as an ID.
    """
    if _fullmatch(_IDENTIFIER_RE, s):
        raise InvalidReferenceFormatError(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(s)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        bad = next((c for c in remote.split("/") if c.lower() != c), remote)
        raise NameContainsUppercaseError(
            f"invalid reference format: repository name ({remote}) must be lowercase "
            f"(path component {bad!r})"
        )
    return _parse(domain + "/" + remainder, s)


def parse_any_reference(s: str) -> Reference | DigestReference:
    """``reference.ParseAnyReference``: an image ID, a digest, or a normalised name."""
    if _fullmatch(_IDENTIFIER_RE, s):
        return DigestReference("sha256:" + s)
    try:
        return DigestReference(_validate_digest(s))
    except DigestInvalidFormatError:
        pass
    return parse_normalized_named(s)


def parse_digest(s: str) -> str:
    """``digest.Parse``: a supported algorithm with its exact lowercase hex, or raise."""
    return _validate_digest(s)


def parse_docker_ref(s: str) -> Reference:
    """``reference.ParseDockerRef``: normalise; keep only the digest when both are given."""
    ref = parse_normalized_named(s)
    if ref.digest is not None:
        return Reference(ref.domain, ref.path, None, ref.digest)
    return ref.with_default_tag()


def familiar_match(pattern: str, ref: Reference) -> bool:
    """``FamiliarMatch``: ``path.Match`` against the familiar string, then the name."""
    return _path_match(pattern, ref.familiar_string()) or _path_match(pattern, ref.familiar_name())


def _path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match``: ``*``/``?``/``[...]`` never cross ``/``; bad patterns raise."""
    regex = _compile_path_pattern(pattern)
    return regex.fullmatch(name) is not None


def _compile_path_pattern(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise PatternError(f"syntax error in pattern {pattern!r}: trailing backslash")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i, cls = _compile_class(pattern, i)
            out.append(cls)
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _compile_class(pattern: str, start: int) -> tuple[int, str]:
    """One ``[...]`` class of ``path.Match``; returns the index after it and a regex."""
    i = start + 1
    n = len(pattern)
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    ranges: list[str] = []
    first = True
    while True:
        if i >= n:
            raise PatternError(f"syntax error in pattern {pattern!r}: unclosed '['")
        if pattern[i] == "]" and not first:
            i += 1
            break
        first = False
        lo, i = _class_char(pattern, i)
        hi = lo
        if i < n and pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise PatternError(f"syntax error in pattern {pattern!r}: bad range")
        ranges.append(re.escape(lo) + ("-" + re.escape(hi) if hi != lo else ""))
    body = "".join(ranges)
    if negate:
        return i, f"[^/{body}]"
    return i, f"(?!/)[{body}]"


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        raise PatternError(f"syntax error in pattern {pattern!r}: bad character class")
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            raise PatternError(f"syntax error in pattern {pattern!r}: trailing backslash")
    return pattern[i], i + 1


def _hub_host(domain: str) -> bool:
    host = domain.lower()
    if host.endswith(":443"):
        host = host[: -len(":443")]
    return host in DOCKER_HUB_ALIASES


def is_docker_hub(ref: Reference) -> bool:
    """True when ``ref`` lives on Docker Hub under any of its host names."""
    return _hub_host(ref.domain)


def hub_view(ref: Reference) -> Reference:
    """The reference as policy sees it: Docker Hub aliases folded into ``docker.io``.

    Registry hosts are case-insensitive, so every domain is lower-cased too:
    ``REGISTRY-1.DOCKER.IO/someuser/tool`` and ``docker.io/someuser/tool`` are one image.
    A one-component path on a Hub alias is an official image, as on ``docker.io``.
    """
    if _hub_host(ref.domain):
        path = ref.path if "/" in ref.path else OFFICIAL_REPO_PREFIX + ref.path
        return Reference(DEFAULT_DOMAIN, path, ref.tag, ref.digest)
    lowered = ref.domain.lower()
    return ref if lowered == ref.domain else Reference(lowered, ref.path, ref.tag, ref.digest)
