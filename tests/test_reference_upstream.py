"""Upstream conformance: the test tables of ``github.com/distribution/reference``.

The data lives in ``tests/fixtures/distribution_reference_cases.json`` (transcribed from
``reference_test.go``, ``normalize_test.go`` and ``regexp_test.go``, Apache-2.0); this module
re-expresses each upstream Go test against :mod:`agent.core.reference`. Every row of every table
runs; none is skipped.

Where upstream tests something our API has no direct counterpart for, the row is mapped onto
the public API and the mapping is stated in the test's docstring:

* ``WithName`` (``TestWithNameFailure``, ``TestDomainAndPath``, ``TestWithTag``,
  ``TestWithDigest``): a bare name is what :func:`parse` returns with neither tag nor digest.
* The regexp tables (``TestDomainRegexp``, ``TestFullNameRegexp``, ``TestReferenceRegexp``,
  ``TestIdentifierRegexp``) test upstream's internal regexps; each is mapped onto the parse
  function that uses that regexp, as an equivalence (match <=> parse outcome).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

from agent.core.reference import (
    DigestInvalidFormatError,
    DigestReference,
    InvalidReferenceFormatError,
    NameContainsUppercaseError,
    NameEmptyError,
    NameNotCanonicalError,
    NameTooLongError,
    Reference,
    ReferenceError,
    TagInvalidFormatError,
    familiar_match,
    parse,
    parse_any_reference,
    parse_docker_ref,
    parse_named,
    parse_normalized_named,
)

Row = dict[str, Any]

FIXTURE: Final = Path(__file__).parent / "fixtures" / "distribution_reference_cases.json"
CASES: Final[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))

# Go error variable (as named in the fixture) -> the Python exception class that stands for it.
GO_ERRORS: Final[dict[str, type[ReferenceError]]] = {
    "ErrReferenceInvalidFormat": InvalidReferenceFormatError,
    "ErrTagInvalidFormat": TagInvalidFormatError,
    "ErrDigestInvalidFormat": DigestInvalidFormatError,
    "ErrNameContainsUppercase": NameContainsUppercaseError,
    "ErrNameEmpty": NameEmptyError,
    "ErrNameTooLong": NameTooLongError,
    "ErrNameNotCanonical": NameNotCanonicalError,
    # github.com/opencontainers/go-digest errors, returned by Parse via digest.Parse.
    "digest.ErrDigestInvalidFormat": DigestInvalidFormatError,
    "digest.ErrDigestInvalidLength": DigestInvalidFormatError,
    "digest.ErrDigestUnsupported": DigestInvalidFormatError,
}

# Row counts of the upstream tables, so an accidental edit of the fixture is caught.
UPSTREAM_ROW_COUNTS: Final[dict[str, int]] = {
    "TestReferenceParse": 47,
    "TestWithNameFailure": 7,
    "TestDomainAndPath": 6,
    "TestSerialization": 4,
    "TestWithTag": 5,
    "TestWithDigest": 4,
    "TestParseNamed": 8,
    "TestValidateReferenceName": 37,
    "TestValidateRemoteName": 21,
    "TestParseRepositoryInfo": 16,
    "TestParseReferenceWithTagAndDigest": 1,
    "TestInvalidReferenceComponents": 3,
    "TestParseAnyReference": 14,
    "TestNormalizedSplitHostname": 11,
    "TestMatchError": 1,
    "TestMatch": 9,
    "TestParseDockerRef": 11,
    "TestDomainRegexp": 30,
    "TestFullNameRegexp": 63,
    "TestReferenceRegexp": 12,
    "TestIdentifierRegexp": 5,
}


def _error_class(err: object) -> type[ReferenceError]:
    """The exception class for a fixture ``err`` value (not ``None``)."""
    if err is True:
        return ReferenceError  # upstream only checks that some error occurred
    if isinstance(err, str):
        return GO_ERRORS[err]
    raise AssertionError(f"unexpected err value in fixture: {err!r}")


def _opt(value: str) -> str | None:
    """Go's zero value "" means "not set"; ours is None."""
    return value or None


def _label(text: str) -> str:
    """A readable, bounded test id fragment (upstream uses the input as the subtest name)."""
    if text == "":
        return "<empty>"
    if len(text) > 50:
        return f"{text[:40]}...({len(text)} chars)"
    return text


def _params(table: str, key: Callable[[Row], str]) -> list[Any]:
    return [
        pytest.param(row, id=f"{index:02d}:{_label(key(row))}")
        for index, row in enumerate(CASES[table])
    ]


def _by(field: str) -> Callable[[Row], str]:
    def key(row: Row) -> str:
        return str(row[field])

    return key


def _bare_name(s: str) -> Reference:
    """Upstream ``WithName``: a name with neither tag nor digest."""
    ref = parse(s)
    assert ref.tag is None, f"{s!r} parsed with tag {ref.tag!r}, expected a bare name"
    assert ref.digest is None, f"{s!r} parsed with digest {ref.digest!r}, expected a bare name"
    return ref


# --------------------------------------------------------------------------------------
# The fixture itself


def test_fixture_has_every_upstream_table() -> None:
    tables = {key: value for key, value in CASES.items() if isinstance(value, list)}
    assert {key: len(rows) for key, rows in tables.items()} == UPSTREAM_ROW_COUNTS
    assert CASES["license"] == "Apache-2.0"


def test_fixture_error_names_are_all_mapped() -> None:
    names = {
        row["err"]
        for value in CASES.values()
        if isinstance(value, list)
        for row in value
        if isinstance(row.get("err"), str)
    } | {row["go_error_per_source"] for row in CASES["TestInvalidReferenceComponents"]}
    assert names <= GO_ERRORS.keys()


# --------------------------------------------------------------------------------------
# reference_test.go


@pytest.mark.parametrize("row", _params("TestReferenceParse", _by("input")))
def test_reference_parse(row: Row) -> None:
    """``Parse``: the error variable, or String() round trip, Name, Domain, Tag, Digest."""
    if row["err"] is not None:
        with pytest.raises(_error_class(row["err"])):
            parse(row["input"])
        return
    ref = parse(row["input"])
    assert str(ref) == row["input"]
    assert ref.name == row["repository"]
    assert ref.domain == row["domain"]
    assert ref.tag == _opt(row["tag"])
    assert ref.digest == _opt(row["digest"])


@pytest.mark.parametrize("row", _params("TestWithNameFailure", _by("input")))
def test_with_name_failure(row: Row) -> None:
    """``WithName`` must refuse the input: :func:`parse` either fails or finds a tag/digest.

    Upstream's ``WithName`` returns ``ErrReferenceInvalidFormat`` for anything that is not a
    bare name, where :func:`parse` may legitimately report something more specific (empty
    name, bad digest) or accept a tagged reference; so only the ``ErrNameTooLong`` rows pin
    the class.
    """
    try:
        ref = parse(row["input"])
    except ReferenceError as exc:
        if row["err"] == "ErrNameTooLong":
            assert isinstance(exc, NameTooLongError), f"got {type(exc).__name__}: {exc}"
        return
    assert row["err"] == "ErrReferenceInvalidFormat"
    assert ref.tag is not None or ref.digest is not None, f"{row['input']!r} is a bare name"


@pytest.mark.parametrize("row", _params("TestDomainAndPath", _by("input")))
def test_domain_and_path(row: Row) -> None:
    """``WithName`` then ``Domain``/``Path``."""
    ref = _bare_name(row["input"])
    assert ref.domain == row["domain"]
    assert ref.path == row["path"]


@pytest.mark.parametrize("row", _params("TestSerialization", _by("description")))
def test_serialization(row: Row) -> None:
    """``Field`` JSON round trip: UnmarshalText is ``Parse``, MarshalText is ``String()``."""
    if row["err"] is not None:
        with pytest.raises(_error_class(row["err"])):
            parse(row["input"])
        return
    ref = parse(row["input"])
    assert ref.name == row["name"]
    assert ref.tag == _opt(row["tag"])
    assert ref.digest == _opt(row["digest"])
    assert str(ref) == row["input"]


@pytest.mark.parametrize("row", _params("TestWithTag", _by("combined")))
def test_with_tag(row: Row) -> None:
    """``WithName``, optionally ``WithDigest``, then ``WithTag``; compare ``String()``."""
    ref = _bare_name(row["name"])
    if row["digest"]:
        ref = ref.with_digest(row["digest"])
    tagged = ref.with_tag(row["tag"])
    assert str(tagged) == row["combined"]
    assert tagged.tag == row["tag"]


@pytest.mark.parametrize("row", _params("TestWithDigest", _by("combined")))
def test_with_digest(row: Row) -> None:
    """``WithName``, optionally ``WithTag``, then ``WithDigest``; compare ``String()``."""
    ref = _bare_name(row["name"])
    if row["tag"]:
        ref = ref.with_tag(row["tag"])
    digested = ref.with_digest(row["digest"])
    assert str(digested) == row["combined"]
    assert digested.digest == row["digest"]


@pytest.mark.parametrize("row", _params("TestParseNamed", _by("input")))
def test_parse_named(row: Row) -> None:
    """``ParseNamed``: canonical names only, else ``ErrNameNotCanonical``."""
    if row["err"] is not None:
        with pytest.raises(_error_class(row["err"])):
            parse_named(row["input"])
        return
    ref = parse_named(row["input"])
    assert ref.domain == row["domain"]
    assert ref.path == row["path"]


# --------------------------------------------------------------------------------------
# normalize_test.go


@pytest.mark.parametrize("row", _params("TestValidateReferenceName", _by("name")))
def test_validate_reference_name(row: Row) -> None:
    """``ParseNormalizedNamed`` accepts ``validRepoNames`` and rejects ``invalidRepoNames``."""
    if row["err"] is not None:
        with pytest.raises(_error_class(row["err"])):
            parse_normalized_named(row["name"])
    else:
        parse_normalized_named(row["name"])


@pytest.mark.parametrize("row", _params("TestValidateRemoteName", _by("repository_name")))
def test_validate_remote_name(row: Row) -> None:
    """``ParseNormalizedNamed`` on the valid/invalid repository-name lists."""
    if row["err"] is not None:
        with pytest.raises(_error_class(row["err"])):
            parse_normalized_named(row["repository_name"])
    else:
        parse_normalized_named(row["repository_name"])


def _repository_info_params() -> list[Any]:
    params: list[Any] = []
    for index, row in enumerate(CASES["TestParseRepositoryInfo"]):
        roles = ["familiar_name", "full_name"]
        if row["ambiguous_name"]:
            roles.append("ambiguous_name")
        params.extend(
            pytest.param(row, row[role], id=f"{index:02d}/{role}/{row[role]}") for role in roles
        )
    return params


@pytest.mark.parametrize(("row", "ref_string"), _repository_info_params())
def test_parse_repository_info(row: Row, ref_string: str) -> None:
    """Familiar, full and ambiguous spellings normalise to the same repository."""
    ref = parse_normalized_named(ref_string)
    assert ref.familiar_name() == row["familiar_name"]
    assert str(ref) == row["full_name"]
    assert ref.domain == row["domain"]
    assert ref.path == row["remote_name"]


@pytest.mark.parametrize("row", _params("TestParseReferenceWithTagAndDigest", _by("short_ref")))
def test_parse_reference_with_tag_and_digest(row: Row) -> None:
    ref = parse_normalized_named(row["short_ref"])
    assert str(ref) == row["expected"]
    assert (ref.tag is not None) is row["is_tagged"]
    assert (ref.digest is not None) is row["is_canonical"]
    assert ref.familiar_string() == row["familiar_string"]


@pytest.mark.parametrize("row", _params("TestInvalidReferenceComponents", _by("call")))
def test_invalid_reference_components(row: Row) -> None:
    """Upstream only checks that an error occurs; ``go_error_per_source`` is what Go returns."""
    expected = GO_ERRORS[row["go_error_per_source"]]
    assert issubclass(expected, _error_class(row["err"]))
    if row["call"] == "ParseNormalizedNamed":
        with pytest.raises(expected):
            parse_normalized_named(row["input"])
        return
    base = parse_normalized_named(row["base"])
    if row["call"] == "WithTag":
        with pytest.raises(expected):
            base.with_tag(row["tag"])
    elif row["call"] == "WithDigest":
        with pytest.raises(expected):
            base.with_digest(row["digest"])
    else:
        raise AssertionError(f"unknown call {row['call']!r}")


@pytest.mark.parametrize("row", _params("TestParseAnyReference", _by("reference")))
def test_parse_any_reference(row: Row) -> None:
    """``ParseAnyReference``: String() is ``equivalent``; the value equals the expected one."""
    ref = parse_any_reference(row["reference"])
    assert str(ref) == row["equivalent"]
    if row["expected"] is not None:
        assert ref == DigestReference(row["expected"]["digest_reference"])
    else:
        assert isinstance(ref, Reference)
        assert ref == parse(row["equivalent"])


@pytest.mark.parametrize("row", _params("TestNormalizedSplitHostname", _by("input")))
def test_normalized_split_hostname(row: Row) -> None:
    ref = parse_normalized_named(row["input"])
    assert ref.domain == row["domain"]
    assert ref.path == row["path"]


@pytest.mark.parametrize("row", _params("TestMatchError", _by("pattern")))
def test_match_error(row: Row) -> None:
    """``FamiliarMatch`` with a malformed pattern (Go: ``path.ErrBadPattern``)."""
    ref = parse_any_reference(row["reference"])
    assert isinstance(ref, Reference)
    with pytest.raises(_error_class(row["err"])):
        familiar_match(row["pattern"], ref)


def _match_label(row: Row) -> str:
    return f"{row['reference']} ~ {row['pattern']}"


@pytest.mark.parametrize("row", _params("TestMatch", _match_label))
def test_match(row: Row) -> None:
    """``FamiliarMatch``: path.Match of the pattern against the familiar string and name."""
    ref = parse_any_reference(row["reference"])
    assert isinstance(ref, Reference)
    assert familiar_match(row["pattern"], ref) is row["expected"]


@pytest.mark.parametrize("row", _params("TestParseDockerRef", _by("name")))
def test_parse_docker_ref(row: Row) -> None:
    """``ParseDockerRef``; its output must itself be a valid reference."""
    ref = parse_docker_ref(row["input"])
    assert str(ref) == row["expected"]
    parse(str(ref))


# --------------------------------------------------------------------------------------
# regexp_test.go, mapped onto the public API


@pytest.mark.parametrize("row", _params("TestDomainRegexp", _by("input")))
def test_domain_regexp(row: Row) -> None:
    """``^domainAndPort$`` matches X  <=>  ``parse(X + "/repo")`` takes X as the domain.

    The name grammar tries the optional domain first, so a matching X always ends up as the
    domain; a non-matching X never can. Port length and IPv6 syntax are not validated
    upstream ("will fail in validation" rows still match), and must not be here either.
    """
    try:
        ref = parse(row["input"] + "/repo")
    except ReferenceError as exc:
        assert not row["match"], f"expected {row['input']!r} to be a domain, got {exc!r}"
        return
    assert (ref.domain == row["input"] and ref.path == "repo") is row["match"], ref


@pytest.mark.parametrize("row", _params("TestFullNameRegexp", _by("input")))
def test_full_name_regexp(row: Row) -> None:
    """``anchoredNameRegexp`` matches X  <=>  ``parse(X)`` is a bare name; subs are
    (domain, path)."""
    try:
        ref = parse(row["input"])
    except ReferenceError as exc:
        assert not row["match"], f"expected {row['input']!r} to be a name, got {exc!r}"
        return
    is_bare_name = ref.tag is None and ref.digest is None and str(ref) == row["input"]
    assert is_bare_name is row["match"], ref
    if row["subs"]:
        assert [ref.domain, ref.path] == row["subs"]


@pytest.mark.parametrize("row", _params("TestReferenceRegexp", _by("input")))
def test_reference_regexp(row: Row) -> None:
    """``ReferenceRegexp`` matches X  <=>  ``parse(X)`` succeeds; subs are
    (name, tag, digest)."""
    if not row["match"]:
        with pytest.raises(ReferenceError):
            parse(row["input"])
        return
    ref = parse(row["input"])
    assert str(ref) == row["input"]
    name, tag, digest = row["subs"]
    assert ref.name == name
    assert ref.tag == _opt(tag)
    assert ref.digest == _opt(digest)


@pytest.mark.parametrize("row", _params("TestIdentifierRegexp", _by("input")))
def test_identifier_regexp(row: Row) -> None:
    """``anchoredIdentifierRegexp`` matches X  <=>  ``ParseAnyReference(X)`` is the digest
    reference ``sha256:X``; a matching X is refused as a name by ``ParseNormalizedNamed``."""
    ref = parse_any_reference(row["input"]) if row["match"] else _try_any(row["input"])
    assert (ref == DigestReference("sha256:" + row["input"])) is row["match"], ref
    if row["match"]:
        with pytest.raises(ReferenceError):
            parse_normalized_named(row["input"])


def _try_any(s: str) -> Reference | DigestReference | None:
    try:
        return parse_any_reference(s)
    except ReferenceError:
        return None
