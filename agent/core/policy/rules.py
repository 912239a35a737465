"""Rule patterns and the compiled rule index.

A rule's ``match`` names images the way people name them (``nginx``, ``bitnami/*``,
``ghcr.io/acme/**:1.*``, ``alpine@sha256:...``) and is normalised like a reference, so
``nginx`` means ``docker.io/library/nginx``. ``*`` matches one path component (or, inside
a component, any run of characters but ``/``); ``**`` matches any number of components,
none included. An optional ``:tag`` glob or ``@digest`` narrows the match.

Decisions must stay fast with 10,000 rules (p50 <= 20 us), so rules are compiled once
into a trie keyed by domain and then path component; a lookup walks only the branches
that can match instead of testing every rule.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from agent.core.reference import DEFAULT_DOMAIN, DOCKER_HUB_ALIASES, OFFICIAL_REPO_PREFIX, Reference

__all__ = ["RuleIndex", "RulePattern", "RulePatternError", "parse_pattern"]


class RulePatternError(ValueError):
    """A rule ``match`` that is not a valid pattern; the message says what is wrong."""


_PATTERN_COMPONENT_RE = re.compile(r"[a-z0-9*]+(?:(?:[._]|__|[-]+)[a-z0-9*]+)*|\*\*")
_DOMAIN_LABEL_RE = re.compile(r"\*|[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_PORT_RE = re.compile(r"[0-9]+")
_IPV6_RE = re.compile(r"\[[a-f0-9:]+\]")
_TAG_GLOB_RE = re.compile(r"[A-Za-z0-9_*?][A-Za-z0-9_.*?-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")


@dataclass(frozen=True)
class RulePattern:
    """A parsed ``match``: a domain, path components, and an optional tag glob or digest.

    ``domain`` is lower-case and may hold ``*`` labels (``*.example.com``); ``port`` is
    None when the pattern names none (then any port matches).
    """

    text: str
    domain: str
    port: str | None
    components: tuple[str, ...]
    tag: str | None = None
    digest: str | None = None

    @cached_property
    def literal_repository(self) -> bool:
        """True when the pattern names exactly one repository (no wildcards)."""
        return "*" not in self.domain and not any("*" in c for c in self.components)

    @cached_property
    def literal_prefix_length(self) -> int:
        """Characters of ``domain/path`` before the first wildcard: longer is more specific."""
        full = self.domain + (f":{self.port}" if self.port else "") + "/"
        full += "/".join(self.components)
        star = full.find("*")
        return len(full) if star < 0 else star

    @cached_property
    def specificity(self) -> tuple[int, int, int, int]:
        """Sort key, higher wins: a digest, then an exact repository with a tag, then an
        exact repository, then wildcards by longer literal prefix; at equal prefix ``*``
        beats ``**``, and a (more literal) tag narrows further."""
        tag_weight = 0
        if self.tag is not None:
            tag_weight = 1 + len(self.tag.replace("*", "").replace("?", ""))
            if "*" not in self.tag and "?" not in self.tag:
                tag_weight += 1000
        bounded = 0 if _GLOBSTAR in self.components else 1
        if self.digest is not None:
            rank = 3
        elif self.literal_repository:
            rank = 2 if self.tag is not None else 1
        else:
            rank = 0
        return (rank, self.literal_prefix_length, bounded, tag_weight)

    def tag_matches(self, tag: str | None, digest: str | None) -> bool:
        """Whether the tag/digest part admits a reference with ``tag`` and ``digest``."""
        if self.digest is not None:
            return digest == self.digest
        if self.tag is not None:
            return tag is not None and fnmatch.fnmatchcase(tag, self.tag)
        return True

    def matches_tag_literally(self, tag: str) -> bool:
        """True when the tag glob admits ``tag`` (used to explain pinning rules)."""
        return self.tag is not None and fnmatch.fnmatchcase(tag, self.tag)


def _split_tag(text: str) -> tuple[str, str | None, str | None]:
    name, at, digest = text.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        raise RulePatternError(
            f"pattern {text!r}: digest {digest!r} must be sha256:<64 hex>, "
            "sha384:<96 hex> or sha512:<128 hex> in lowercase"
        )
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        tag = name[colon + 1 :]
        if not _TAG_GLOB_RE.fullmatch(tag):
            raise RulePatternError(
                f"pattern {text!r}: tag glob {tag!r} may hold letters, digits, '_', '.', '-', "
                "'*' and '?' (at most 128)"
            )
        if at:
            raise RulePatternError(f"pattern {text!r}: give a tag or a digest, not both")
        return name[:colon], tag, None
    return name, None, digest if at else None


def _parse_domain(text: str, raw: str) -> tuple[str, str | None]:
    host, port = raw, None
    if raw.startswith("["):
        end = raw.find("]")
        host, rest = raw[: end + 1], raw[end + 1 :]
        if not _IPV6_RE.fullmatch(host):
            raise RulePatternError(f"pattern {text!r}: bad IPv6 host {raw!r}")
        if rest:
            if not rest.startswith(":") or not _PORT_RE.fullmatch(rest[1:]):
                raise RulePatternError(f"pattern {text!r}: bad port in {raw!r}")
            port = rest[1:]
        return host, port
    if ":" in raw:
        host, port = raw.split(":", 1)
        if not _PORT_RE.fullmatch(port):
            raise RulePatternError(f"pattern {text!r}: port {port!r} must be digits")
    labels = host.split(".")
    for label in labels:
        if not _DOMAIN_LABEL_RE.fullmatch(label):
            raise RulePatternError(
                f"pattern {text!r}: registry host {host!r} has a bad label {label!r} "
                "(use letters, digits and '-', or '*' for a whole label)"
            )
    return host, port


def parse_pattern(text: str) -> RulePattern:
    """Normalise a rule ``match`` the way ``ParseNormalizedNamed`` normalises names."""
    if not text or text != text.strip():
        raise RulePatternError(f"pattern {text!r} is empty or has surrounding whitespace")
    name, tag, digest = _split_tag(text)
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        domain, port = _parse_domain(text, first.lower())
        path = rest
    else:
        domain, port, path = DEFAULT_DOMAIN, None, name
    if domain in DOCKER_HUB_ALIASES and (port is None or port == "443"):
        domain, port = DEFAULT_DOMAIN, None
    components = tuple(path.split("/"))
    for component in components:
        if not _PATTERN_COMPONENT_RE.fullmatch(component):
            problem = (
                "must be lowercase"
                if component.lower() != component
                else (
                    "may hold a-z 0-9 and single separators ('.', '_', '__', '-'), "
                    "with '*' for any run of characters or '**' alone for any components"
                )
            )
            raise RulePatternError(f"pattern {text!r}: path component {component!r} {problem}")
    if domain == DEFAULT_DOMAIN and len(components) == 1 and components[0] != "**":
        components = (OFFICIAL_REPO_PREFIX.rstrip("/"), components[0])
    return RulePattern(text, domain, port, components, tag, digest)


# --- the index ------------------------------------------------------------------------

_STAR = "*"
_GLOBSTAR = "**"


@dataclass
class _Node:
    """One trie level: literal children, ``*`` child, glob children, ``**`` child."""

    literal: dict[str, _Node] = field(default_factory=dict)
    star: _Node | None = None
    globs: list[tuple[str, _Node]] = field(default_factory=list)
    globstar: _Node | None = None
    terminal: list[int] = field(default_factory=list)

    def child(self, component: str) -> _Node:
        if component == _GLOBSTAR:
            self.globstar = self.globstar or _Node()
            return self.globstar
        if component == _STAR:
            self.star = self.star or _Node()
            return self.star
        if "*" in component:
            for pattern, node in self.globs:
                if pattern == component:
                    return node
            node = _Node()
            self.globs.append((component, node))
            return node
        return self.literal.setdefault(component, _Node())


def _domain_glob_matches(pattern: str, domain: str) -> bool:
    labels_p = pattern.split(".")
    labels_d = domain.split(".")
    if len(labels_p) != len(labels_d):
        return False
    return all(p in ("*", d) for p, d in zip(labels_p, labels_d, strict=True))


class RuleIndex:
    """Rules compiled for lookup; ``match`` yields the indices of rules that match.

    Built once per policy (policies are immutable), so lookups never allocate tries.
    """

    def __init__(self, patterns: Iterable[RulePattern]) -> None:
        self._patterns: list[RulePattern] = list(patterns)
        self._by_host: dict[str, _Node] = {}
        self._glob_hosts: list[tuple[str, _Node]] = []
        for i, pattern in enumerate(self._patterns):
            if "*" in pattern.domain:
                root = next((n for h, n in self._glob_hosts if h == pattern.domain), None)
                if root is None:
                    root = _Node()
                    self._glob_hosts.append((pattern.domain, root))
            else:
                root = self._by_host.setdefault(pattern.domain, _Node())
            node = root
            for component in pattern.components:
                node = node.child(component)
            node.terminal.append(i)

    @property
    def patterns(self) -> list[RulePattern]:
        return self._patterns

    def match(self, ref: Reference, *, any_tag: bool = False) -> list[int]:
        """Indices of the rules whose pattern admits ``ref`` (already in its hub view).

        ``any_tag`` ignores tag and digest constraints: the rules that could apply to
        some tag of the repository (for pulls of all tags).
        """
        host, _, port = ref.domain.partition(":")
        if ref.domain.startswith("["):
            end = ref.domain.find("]")
            host, port = ref.domain[: end + 1], ref.domain[end + 2 :]
        components = ref.path.split("/")
        found: list[int] = []
        roots: list[_Node] = []
        exact = self._by_host.get(host)
        if exact is not None:
            roots.append(exact)
        for pattern, node in self._glob_hosts:
            if _domain_glob_matches(pattern, host):
                roots.append(node)
        for root in roots:
            for node in _walk(root, components, 0):
                for i in node.terminal:
                    p = self._patterns[i]
                    if p.port is not None and p.port != (port or None):
                        continue
                    if (any_tag or p.tag_matches(ref.tag, ref.digest)) and i not in found:
                        found.append(i)
        return found


def _walk(node: _Node, components: list[str], i: int) -> Iterator[_Node]:
    """Yield every node reached by consuming all of ``components[i:]``."""
    if node.globstar is not None:
        # ``**`` may swallow zero or more components, including all that remain.
        for j in range(i, len(components) + 1):
            yield from _walk(node.globstar, components, j)
    if i == len(components):
        yield node
        return
    component = components[i]
    child = node.literal.get(component)
    if child is not None:
        yield from _walk(child, components, i + 1)
    if node.star is not None:
        yield from _walk(node.star, components, i + 1)
    for pattern, glob_child in node.globs:
        if fnmatch.fnmatchcase(component, pattern):
            yield from _walk(glob_child, components, i + 1)
