"""agent.core.inspection.dockerfile: which images a BuildKit build of a Dockerfile pulls."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.inspection.dockerfile.resolve import (
    DockerfileError,
    DockerfileImages,
    ImageUse,
    parse_dockerfile,
    reachable_stages,
)


def images(text: str | bytes, build_args: Mapping[str, str] | None = None) -> list[str]:
    return list(parse_dockerfile(text, build_args).images)


def refused(text: str | bytes, build_args: Mapping[str, str] | None = None) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile(text, build_args)
    return info.value


# --- FROM and stages -------------------------------------------------------------------


def test_single_from_is_reported_with_line_stage_and_instruction() -> None:
    result = parse_dockerfile("# a comment\n\nFROM  alpine:3.19  \nRUN true\n")
    assert result.uses == (ImageUse("alpine:3.19", 3, "from", 0, "FROM  alpine:3.19"),)
    assert result.stages == (None,)


def test_multi_stage_build_lists_each_base_once_and_skips_stage_references() -> None:
    text = (
        "FROM golang:1.22 AS build\n"
        "RUN go build\n"
        "FROM gcr.io/distroless/static AS run\n"
        "COPY --from=build /app /app\n"
        "FROM build AS test\n"
        "FROM golang:1.22\n"
    )
    result = parse_dockerfile(text)
    assert result.images == ("golang:1.22", "gcr.io/distroless/static")
    assert [(u.image, u.line, u.stage) for u in result.uses] == [
        ("golang:1.22", 1, 0),
        ("gcr.io/distroless/static", 3, 1),
        ("golang:1.22", 6, 3),
    ]
    assert result.stages == ("build", "run", "test", None)


def test_from_scratch_pulls_nothing() -> None:
    assert images("FROM scratch\nCOPY app /\n") == []


def test_from_refers_only_to_earlier_stages() -> None:
    # A name defined later is an image, as in dockerfile2llb's addState.
    assert images("FROM tool AS first\nFROM alpine AS tool\n") == ["tool", "alpine"]


def test_stage_name_is_stored_lower_case_and_from_matches_it() -> None:
    result = parse_dockerfile("FROM golang AS Builder\nFROM builder\n")
    assert result.images == ("golang",)
    assert result.stages == ("builder", None)


def test_from_stage_reference_in_other_case_is_refused_not_guessed() -> None:
    err = refused("FROM golang AS builder\nFROM Builder\n")
    assert err.line == 2
    assert "stage names are lower-case" in str(err)


def test_instruction_keywords_are_case_insensitive() -> None:
    text = "from alpine As base\nCoPy --from=nginx /a /b\nrun --mount=from=busybox true\n"
    assert images(text) == ["alpine", "nginx", "busybox"]


def test_platform_flag_is_accepted_and_not_expanded() -> None:
    text = "FROM --platform=$BUILDPLATFORM golang AS build\nFROM --platform=linux/arm64 alpine\n"
    assert images(text) == ["golang", "alpine"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("FROM --pull=always alpine\n", "unknown flag --pull"),
        ("FROM --platform linux/amd64 alpine\n", "--platform needs a value"),
        ("FROM --platform=a --platform=b alpine\n", "duplicate flag"),
        ("FROM alpine extra\n", "FROM takes an image"),
        ("FROM alpine AS\n", "FROM takes an image"),
        ("FROM alpine AS 1st\n", "invalid stage name"),
        ("FROM\n", "FROM takes an image"),
    ],
)
def test_malformed_from_is_refused_with_its_line(text: str, needle: str) -> None:
    err = refused("ARG X=1\n" + text)
    assert err.line == 2
    assert needle in str(err)
    assert str(err).startswith("line 2: FROM")


def test_dockerfile_without_from_is_refused() -> None:
    assert "no FROM" in str(refused("ARG A=1\n"))
    assert "no instructions" in str(refused("# just a comment\n\n"))
    assert "empty" in str(refused(b""))


def test_instruction_before_first_from_other_than_arg_is_refused() -> None:
    err = refused("RUN echo hi\nFROM alpine\n")
    assert err.line == 1
    assert "only ARG may come before the first FROM" in str(err)


def test_unknown_instruction_is_refused() -> None:
    err = refused("FROM alpine\nFETCH evil\n")
    assert err.line == 2
    assert "unknown instruction FETCH" in str(err)


# --- ARG substitution --------------------------------------------------------------------


def test_global_arg_default_is_substituted_into_from() -> None:
    text = 'ARG REGISTRY=registry.example.com\nARG IMAGE="${REGISTRY}/team/app"\nFROM $IMAGE\n'
    assert images(text) == ["registry.example.com/team/app"]


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("${SET}", "set"),
        ("$SET", "set"),
        ("${SET:-x}", "set"),
        ("${EMPTY:-x}", "x"),
        ("${EMPTY-x}", ""),
        ("${NOVALUE:-x}", "x"),
        ("${NOVALUE-x}", "x"),
        ("${UNDECLARED:-x}", "x"),
        ("${SET:+x}", "x"),
        ("${EMPTY:+x}", ""),
        ("${EMPTY+x}", "x"),
        ("${NOVALUE+x}", ""),
        ("${SET:?boom}", "set"),
        ("${EMPTY?boom}", ""),
    ],
)
def test_substitution_forms_follow_buildkit(word: str, expected: str) -> None:
    text = f"ARG SET=set\nARG EMPTY=\nARG NOVALUE\nFROM alpine:v{word}\n"
    assert images(text) == [f"alpine:v{expected}"]


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("${V#*.}", "2.3-rc1"),
        ("${V##*.}", "3-rc1"),
        ("${V%.*}", "1.2"),
        ("${V%%.*}", "1"),
        ("${V/./_}", "1_2.3-rc1"),
        ("${V//./_}", "1_2_3-rc1"),
        ("${V%-rc?}", "1.2.3"),
    ],
)
def test_pattern_substitutions_follow_buildkit(word: str, expected: str) -> None:
    assert images(f"ARG V=1.2.3-rc1\nFROM app:{word}\n") == [f"app:{expected}"]


def test_quotes_and_escapes_in_from_are_processed_like_buildkit() -> None:
    assert images("ARG T=3.19\nFROM \"alpine\":'3'.\\1${T#3.1}\n") == ["alpine:3.19"]


def test_build_arg_overrides_default_and_is_taken_literally() -> None:
    text = "ARG BASE=alpine\nFROM ${BASE}\n"
    assert images(text, {"BASE": "debian:12"}) == ["debian:12"]
    assert "'$'" in str(refused(text, {"BASE": "x$y"}))


def test_build_arg_for_undeclared_arg_has_no_effect() -> None:
    err = refused("FROM ${BASE}\n", {"BASE": "debian"})
    assert "BASE is not a global build arg" in str(err)


def test_arg_declared_inside_a_stage_is_not_in_scope_for_from() -> None:
    err = refused("FROM alpine\nARG NEXT=debian\nFROM ${NEXT}\n")
    assert err.line == 3
    assert "NEXT is not a global build arg" in str(err)


def test_from_with_arg_without_value_names_line_and_variable() -> None:
    err = refused("# syntax=docker/dockerfile:1\nARG BASE\nFROM ${BASE}\n")
    assert (
        str(err) == "line 3: FROM ${BASE}: build arg BASE has no value; pass --build-arg BASE=..."
    )
    assert err.line == 3


def test_unset_arg_used_inside_another_arg_default_is_reported_at_the_from() -> None:
    err = refused("ARG TAG\nARG IMAGE=app:${TAG}\nFROM ${IMAGE:-busybox}\n")
    assert "build arg TAG has no value" in str(err)


def test_unset_variable_in_an_unused_default_is_fine() -> None:
    assert images("ARG A=alpine\nFROM ${A:-$NOT_SET}\n") == ["alpine"]


def test_automatic_platform_arg_is_unresolvable_unless_given() -> None:
    text = "FROM --platform=$BUILDPLATFORM golang\nFROM ${TARGETARCH}/alpine:${TARGETVARIANT:-x}\n"
    err = refused(text)
    assert err.line == 2
    assert "TARGETARCH is set by BuildKit" in str(err)
    given_args = {"TARGETARCH": "arm64", "TARGETVARIANT": ""}
    assert images(text, given_args) == ["golang", "arm64/alpine:x"]


def test_global_arg_default_overrides_automatic_arg() -> None:
    assert images("ARG TARGETARCH=amd64\nFROM ${TARGETARCH}/alpine\n") == ["amd64/alpine"]


def test_question_mark_form_fails_with_the_message() -> None:
    # FROM splits on blanks before substitution, even inside quotes (line_parsers.go).
    assert "FROM takes an image" in str(refused('ARG BASE\nFROM "${BASE:?set it}"\n'))
    err = refused("ARG BASE\nFROM ${BASE:?set-BASE-please}\n")
    assert "BASE: set-BASE-please" in str(err)


@pytest.mark.parametrize(
    "word",
    ["${A:=b}", "${A=b}", "${A:#x}", "${A", "${}", "${A:-x", "'unterminated", "${A/x}"],
)
def test_unsupported_or_broken_substitution_is_refused(word: str) -> None:
    err = refused(f"ARG A=a\nFROM img{word}\n")
    assert err.line == 2


@pytest.mark.parametrize("word", ["alpine$", "alpine\\$A", "'$A'alpine", ""])
def test_image_still_holding_dollar_or_empty_is_refused(word: str) -> None:
    err = refused(f"ARG A=x\nARG E=\nFROM {word or '${E}'}\n")
    assert err.line == 3


# --- line structure ------------------------------------------------------------------------


def test_line_continuations_skip_comments_and_empty_lines() -> None:
    text = "FROM \\\n# a comment inside\n\n   alpine:3 \\  \n  AS base\nFROM base\n"
    result = parse_dockerfile(text)
    assert result.images == ("alpine:3",)
    assert result.uses[0].line == 1
    assert result.stages == ("base", None)


def test_escaped_escape_is_not_a_continuation() -> None:
    # "\\" at the end is an escaped backslash, so the next line is its own instruction.
    assert images("FROM alpine\nRUN echo \\\\\nFROM busybox\n") == ["alpine", "busybox"]


def test_comment_lines_are_not_instructions_but_trailing_hash_is_text() -> None:
    assert "FROM takes an image" in str(refused("FROM alpine # not a comment\n"))
    assert images("# FROM evil\n   # FROM evil\nFROM alpine\n") == ["alpine"]


def test_escape_directive_switches_continuation_to_backtick() -> None:
    text = "# escape=`\nFROM mcr.microsoft.com/windows `\n  AS win\nRUN dir c:\\\nFROM win\n"
    result = parse_dockerfile(text)
    assert result.images == ("mcr.microsoft.com/windows",)
    assert result.stages == ("win", None)


def test_directive_after_an_instruction_or_blank_line_is_a_plain_comment() -> None:
    text = "\n# escape=`\nFROM alpine \\\n  AS x\n"
    assert parse_dockerfile(text).stages == ("x",)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("# escape=x\nFROM alpine\n", "invalid escape token"),
        ("# escape=`\n# Escape=\\\nFROM alpine\n", "only one escape parser directive"),
    ],
)
def test_bad_directives_are_refused(text: str, needle: str) -> None:
    assert needle in str(refused(text))


def test_crlf_line_endings_and_utf8_bom_are_accepted() -> None:
    text = b"\xef\xbb\xbf# syntax=docker/dockerfile:1\r\nFROM alpine \\\r\n  AS a\r\nFROM a\r\n"
    result = parse_dockerfile(text)
    assert result.images == ("docker/dockerfile:1", "alpine")
    assert result.stages == ("a", None)


def test_non_utf8_bytes_are_refused_with_the_line() -> None:
    err = refused(b"FROM alpine\nRUN echo \xff\n")
    assert err.line == 2
    assert "UTF-8" in str(err)


def test_text_over_max_size_is_refused() -> None:
    with pytest.raises(DockerfileError, match="limit"):
        parse_dockerfile("FROM alpine\n" * 10, max_size=50)
    with pytest.raises(DockerfileError, match="limit"):
        parse_dockerfile(b"FROM alpine\n" * 10, max_size=50)


def test_line_longer_than_buildkit_accepts_is_refused() -> None:
    err = refused("FROM alpine\nRUN echo " + "x" * 70000 + "\n")
    assert err.line == 2


# --- heredocs -------------------------------------------------------------------------------


def test_heredoc_body_is_content_not_instructions() -> None:
    text = "FROM alpine\nRUN <<EOF\nFROM evil\nCOPY --from=evil2 / /\nEOF\nFROM busybox\n"
    assert images(text) == ["alpine", "busybox"]


def test_several_heredocs_chomped_and_quoted_on_one_line() -> None:
    text = (
        "FROM alpine\n"
        "RUN <<-'ONE' 3<<\"TWO\" cat /dev/fd/3\n"
        "\tFROM evil1\n"
        "\tONE\n"
        "FROM evil2\n"
        "TWO\n"
        "FROM busybox\n"
    )
    assert images(text) == ["alpine", "busybox"]


def test_copy_heredoc_body_is_skipped() -> None:
    text = "FROM alpine\nCOPY <<EOF /etc/app.conf\nFROM evil\nEOF\nFROM busybox\n"
    assert images(text) == ["alpine", "busybox"]


def test_heredoc_terminator_must_match_exactly() -> None:
    # Without "-", a tab-indented terminator does not end the body.
    text = "FROM alpine\nRUN <<EOF\n\tEOF\nFROM evil\nEOF\nFROM busybox\n"
    assert images(text) == ["alpine", "busybox"]


def test_unterminated_heredoc_is_refused() -> None:
    err = refused("FROM alpine\nRUN <<EOF\necho hi\n")
    assert err.line == 2
    assert "unterminated heredoc" in str(err)


def test_heredoc_syntax_in_exec_form_or_quotes_is_not_a_heredoc() -> None:
    assert images('FROM alpine\nRUN ["cat", "<<EOF"]\nFROM busybox\n') == ["alpine", "busybox"]
    assert images("FROM alpine\nRUN echo '<<EOF'\nFROM busybox\n") == ["alpine", "busybox"]


def test_onbuild_heredoc_body_is_skipped() -> None:
    text = "FROM alpine\nONBUILD RUN <<EOF\nFROM evil\nEOF\nFROM busybox\n"
    assert images(text) == ["alpine", "busybox"]


# --- COPY --from and RUN --mount -------------------------------------------------------------


def test_copy_from_image_stage_name_and_stage_index() -> None:
    text = (
        "FROM golang AS build\n"
        "FROM alpine\n"
        "COPY --from=BUILD /a /a\n"
        "COPY --from=0 /b /b\n"
        "COPY --from=nginx:1.27 /c /c\n"
        "COPY --from=scratch /d /d\n"
        'COPY --link --from="ghcr.io/o/tool" /e /e\n'
    )
    result = parse_dockerfile(text)
    assert result.images == ("golang", "alpine", "nginx:1.27", "ghcr.io/o/tool")
    copies = [u for u in result.uses if u.source == "copy-from"]
    assert [(u.line, u.stage) for u in copies] == [(5, 1), (7, 1)]


def test_copy_from_stage_defined_later_is_a_stage_not_an_image() -> None:
    assert images("FROM alpine\nCOPY --from=late /a /a\nFROM busybox AS late\n") == [
        "alpine",
        "busybox",
    ]


def test_copy_from_index_out_of_range_is_refused() -> None:
    err = refused("FROM alpine\nCOPY --from=1 /a /a\n")
    assert err.line == 2
    assert "no stage with index 1" in str(err)


def test_copy_from_with_variable_is_refused_because_buildkit_does_not_expand_it() -> None:
    err = refused("ARG IMG=nginx\nFROM alpine\nARG IMG\nCOPY --from=${IMG} /a /a\n")
    assert err.line == 4
    assert "does not expand variables" in str(err)


def test_copy_flags_are_checked_and_add_has_no_from() -> None:
    assert "unknown flag --form" in str(refused("FROM alpine\nCOPY --form=x /a /b\n"))
    assert "needs a value" in str(refused("FROM alpine\nCOPY --from nginx /a /b\n"))
    assert "duplicate flag" in str(refused("FROM a\nCOPY --from=b --from=c /a /b\n"))
    assert "unknown flag --from" in str(refused("FROM alpine\nADD --from=nginx /a /b\n"))


def test_run_mount_from_image_and_stage() -> None:
    text = (
        "FROM golang AS deps\n"
        "FROM alpine\n"
        "RUN --mount=type=bind,from=deps,target=/d \\\n"
        "    --mount=type=cache,target=/c,FROM=busybox:1 \\\n"
        "    --mount=type=bind,source=/x,target=/y \\\n"
        '    --mount="type=bind,\\"from=ghcr.io/o/a,b\\",target=/z" make\n'
        "RUN --network=none --mount=from=0,target=/n true\n"
    )
    result = parse_dockerfile(text)
    mounts = [(u.image, u.line, u.stage) for u in result.uses if u.source == "run-mount"]
    # "0" is not a stage index for --mount: BuildKit looks it up as a name, then an image.
    assert mounts == [("busybox:1", 3, 1), ("ghcr.io/o/a,b", 3, 1), ("0", 7, 1)]


@pytest.mark.parametrize(
    ("mount", "needle"),
    [
        ("from=$IMG,target=/x", "does not expand variables"),
        ("from=a,broken,target=/x", "key=value"),
        ('from=a\\"b', "bare quote"),  # the flag splitter unescapes \" to "
        ("", "empty --mount"),
    ],
)
def test_bad_run_mount_is_refused(mount: str, needle: str) -> None:
    err = refused(f"FROM alpine\nRUN --mount={mount} true\n")
    assert err.line == 2
    assert needle in str(err)


def test_unknown_run_flag_is_refused() -> None:
    assert "unknown flag --mnt" in str(refused("FROM alpine\nRUN --mnt=from=x true\n"))


# --- syntax frontends and ONBUILD --------------------------------------------------------------


def test_syntax_directive_frontend_is_reported_first() -> None:
    result = parse_dockerfile("# check=error=true\n#Syntax = docker/dockerfile:1.7 \nFROM alpine\n")
    assert result.uses[0] == ImageUse(
        "docker/dockerfile:1.7", 2, "syntax", None, "#Syntax = docker/dockerfile:1.7"
    )
    assert result.images == ("docker/dockerfile:1.7", "alpine")


def test_syntax_directive_after_shebang_and_in_slash_form_is_detected() -> None:
    assert images("#!/usr/bin/env buildctl\n# syntax=example/fe\nFROM alpine\n")[0] == "example/fe"
    err = refused("//syntax=example/fe2\nFROM alpine\n")
    assert "unknown instruction //SYNTAX=EXAMPLE/FE2" in str(err)


def test_syntax_comment_after_instruction_is_not_a_frontend() -> None:
    assert images("FROM alpine\n# syntax=evil/frontend\n") == ["alpine"]


def test_buildkit_syntax_build_arg_replaces_the_directive() -> None:
    result = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nFROM alpine\n", {"BUILDKIT_SYNTAX": " evil/fe:2 --x"}
    )
    assert result.uses[0].image == "evil/fe:2"
    assert result.uses[0].line == 0
    # BuildKit 0.8 (dockerd 20.10) knows no BUILDKIT_SYNTAX: there the directive decides.
    assert result.images == ("evil/fe:2", "docker/dockerfile:1", "alpine")


def test_buildkit_0_8_reads_any_directive_and_keeps_the_last_syntax() -> None:
    """An unknown directive ends today's directives, not 0.8's; 0.8 keeps the last."""
    hidden = parse_dockerfile("# foo=bar\n# syntax=evil/fe\nFROM alpine\n")
    assert hidden.images == ("evil/fe", "alpine")
    assert hidden.uses[0].line == 2
    later = parse_dockerfile("# syntax=docker/dockerfile:1\n# foo=bar\n# syntax=evil/fe\nFROM a\n")
    assert later.images == ("docker/dockerfile:1", "evil/fe", "a")
    # a #! line, // comments and JSON are not 0.8 directives: nothing more is found
    assert parse_dockerfile("#!/x\n# syntax=evil/fe\nFROM a\n").images == ("evil/fe", "a")
    assert parse_dockerfile("#  Syntax  =  evil/fe  \r\nFROM a\n").images == ("evil/fe", "a")


def test_onbuild_pulls_are_reported_as_onbuild() -> None:
    text = (
        "FROM alpine AS base\n"
        "ONBUILD COPY --from=nginx /a /a\n"
        "ONBUILD RUN --mount=from=busybox,target=/b true\n"
        "ONBUILD COPY --from=0 /a /a\n"
        "ONBUILD RUN make\n"
    )
    uses = parse_dockerfile(text).uses
    assert [(u.image, u.source, u.line, u.stage) for u in uses] == [
        ("alpine", "from", 1, 0),
        ("nginx", "onbuild", 2, 0),
        ("busybox", "onbuild", 3, 0),
    ]


@pytest.mark.parametrize(
    "trigger",
    ["ONBUILD FROM evil", "ONBUILD ONBUILD RUN x", "ONBUILD", "ONBUILD COPY --from=$X a b"],
)
def test_bad_onbuild_is_refused(trigger: str) -> None:
    assert refused(f"FROM alpine\n{trigger}\n").line == 2


# --- API details ----------------------------------------------------------------------------


def test_images_are_distinct_in_first_seen_order() -> None:
    result = DockerfileImages(
        uses=(
            ImageUse("b", 1, "from", 0, "FROM b"),
            ImageUse("a", 2, "from", 1, "FROM a"),
            ImageUse("b", 3, "copy-from", 1, "COPY --from=b / /"),
        ),
        stages=(None, None),
    )
    assert result.images == ("b", "a")


def test_instruction_text_is_one_trimmed_line_of_bounded_length() -> None:
    text = "FROM alpine\nCOPY --from=nginx \\\n  " + "/src " * 100 + "/dst\n"
    use = parse_dockerfile(text).uses[1]
    assert "\n" not in use.instruction
    assert use.instruction.startswith("COPY --from=nginx")
    assert len(use.instruction) <= 200


def test_error_without_line_has_no_prefix() -> None:
    assert str(DockerfileError("bad")) == "bad"
    assert DockerfileError("bad").line is None
    assert str(DockerfileError("bad", 7)) == "line 7: bad"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.lists(
            st.sampled_from(
                [
                    "FROM alpine",
                    "FROM ${A:-x}",
                    "ARG A=b",
                    "RUN <<EOF",
                    "EOF",
                    "COPY --from=0 a b",
                    "RUN --mount=from=x,target=/t y",
                    "\\",
                    "# escape=`",
                    "`",
                    "ONBUILD COPY --from=a b c",
                    '"',
                    "${",
                    "",
                ]
            )
        ).map("\n".join),
    )
)
def test_arbitrary_text_either_parses_or_raises_dockerfile_error(text: str | bytes) -> None:
    try:
        result = parse_dockerfile(text)
    except DockerfileError:
        return
    assert all(isinstance(image, str) and image for image in result.images)


def test_without_heredoc_support_a_from_in_a_heredoc_body_is_an_instruction() -> None:
    text = "FROM alpine\nRUN <<EOF\nFROM someuser/tool\nEOF\n"
    assert parse_dockerfile(text).images == ("alpine",)
    with pytest.raises(DockerfileError):
        # "EOF" is not an instruction for a parser without heredocs.
        parse_dockerfile(text, heredocs=False)
    text = "FROM alpine\nCOPY <<FROM /x\nFROM someuser/tool\n"
    with pytest.raises(DockerfileError):
        parse_dockerfile(text)
    assert parse_dockerfile(text, heredocs=False).images == ("alpine", "someuser/tool")


# --------------------------------------------------------------------------- classic builder


def classic(text: str, **build_args: str) -> list[str]:
    """Images the daemon's classic builder pulls for `text`."""
    return list(parse_dockerfile(text, build_args, builder="classic").images)


@pytest.mark.parametrize(
    "name",
    [
        *("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy"),
        *("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"),
    ],
)
def test_classic_builder_lets_proxy_build_args_into_from_without_an_arg_line(name: str) -> None:
    text = f"FROM ${{{name}:-alpine}}\n"
    assert classic(text, **{name: "someuser/tool"}) == ["someuser/tool"]
    assert classic(text) == ["alpine"]
    # BuildKit has no such builtins: the undeclared name stays unset there.
    assert parse_dockerfile(text, {name: "someuser/tool"}).images == ("alpine",)


def test_classic_builder_lets_proxy_build_args_into_meta_arg_defaults() -> None:
    text = "ARG BASE=${https_proxy:-alpine}\nFROM $BASE\n"
    assert classic(text, https_proxy="someuser/tool") == ["someuser/tool"]


def test_classic_builder_has_no_automatic_platform_args() -> None:
    text = "FROM ${TARGETARCH:-someuser/tool}\n"
    assert classic(text) == ["someuser/tool"]
    assert classic(text, TARGETARCH="amd64") == ["someuser/tool"]  # not declared: unset
    assert classic("ARG TARGETARCH\nFROM ${TARGETARCH:-x}/img\n", TARGETARCH="acme") == ["acme/img"]


def test_classic_builder_expands_one_arg_line_before_defining_its_names() -> None:
    assert classic("ARG A=someuser/tool B=${A:-alpine}\nFROM $B\n") == ["alpine"]
    assert parse_dockerfile("ARG A=someuser/tool B=${A:-alpine}\nFROM $B\n").images == (
        "someuser/tool",
    )
    assert classic("ARG A=someuser/tool\nARG B=${A:-alpine}\nFROM $B\n") == ["someuser/tool"]


def test_classic_builder_unsets_an_arg_redeclared_without_a_value() -> None:
    text = "ARG X=alpine\nARG X\nFROM ${X:-someuser/tool}\n"
    assert classic(text) == ["someuser/tool"]
    assert classic(text, X="busybox") == ["busybox"]


@pytest.mark.parametrize(
    ("key", "build_args"),
    [
        ("${HTTP_PROXY}", {"HTTP_PROXY": "B"}),
        ('"B"', {}),
        ("'B'", {}),
        ("\\B", {}),
        ("\ufeffB", {}),
    ],
)
def test_classic_builder_expands_arg_names_too(key: str, build_args: dict[str, str]) -> None:
    text = f"ARG B=alpine\nARG {key}=someuser/tool\nFROM $B\n"
    assert classic(text, **build_args) == ["someuser/tool"]


def test_classic_builder_refuses_arg_names_it_cannot_resolve() -> None:
    with pytest.raises(DockerfileError, match="cannot be resolved"):
        classic("ARG ${NOPE}=someuser/tool\nFROM alpine\n")


def test_a_leading_bom_is_dropped_from_every_word_like_gos_scanner() -> None:
    text = "ARG B=\ufeff\nARG E=${B:+alpine}\nARG H=${E:-someuser/tool}\nFROM $H\n"
    assert classic(text) == ["someuser/tool"]
    assert images(text) == ["someuser/tool"]


def test_older_parsers_stop_reading_directives_at_check() -> None:
    text = "# check=skip=all\n# escape=`\nFROM alpine\nRUN true #`\nFROM someuser/tool\n"
    assert images(text) == ["alpine"]
    old = parse_dockerfile(text, check_directive=False, builder="classic").images
    assert old == ("alpine", "someuser/tool")


def test_onbuild_copy_from_an_index_out_of_int64_range_is_an_image() -> None:
    text = "FROM alpine AS base\nONBUILD COPY --from=99999999999999999999 /a /a\nFROM base\n"
    assert images(text) == ["alpine", "99999999999999999999"]
    assert images("FROM alpine\nONBUILD COPY --from=1 /a /a\n") == ["alpine"]


def test_classic_builder_ignores_the_syntax_directive_and_buildkit_syntax_arg() -> None:
    text = "# syntax=docker/dockerfile:1\nFROM alpine\n"
    assert classic(text) == ["alpine"]
    assert classic("FROM alpine\n", BUILDKIT_SYNTAX="someuser/frontend") == ["alpine"]
    assert parse_dockerfile(text).images == ("docker/dockerfile:1", "alpine")


def test_classic_builder_pulls_copy_from_a_later_stage_as_an_image() -> None:
    text = "FROM alpine AS first\nFROM alpine AS second\nCOPY --from=later /a /a\n"
    text += "COPY --from=FIRST /b /b\nFROM alpine AS later\n"
    assert classic(text) == ["alpine", "later"]
    assert parse_dockerfile(text).images == ("alpine",)


def test_classic_builder_copy_from_index_must_be_an_earlier_stage() -> None:
    assert classic("FROM alpine\nFROM busybox\nCOPY --from=0 /a /a\n") == ["alpine", "busybox"]
    with pytest.raises(DockerfileError, match="no stage with index 1"):
        classic("FROM alpine\nFROM busybox\nCOPY --from=1 /a /a\n")


def test_classic_builder_matches_from_stage_names_in_any_case() -> None:
    assert classic("FROM alpine AS base\nFROM BASE\n") == ["alpine"]


def test_classic_builder_never_mounts_images_in_run() -> None:
    text = "FROM alpine\nRUN --mount=type=bind,from=someuser/tool,target=/t true\n"
    assert classic(text) == ["alpine"]
    assert parse_dockerfile(text).images == ("alpine", "someuser/tool")


# --- stage deps and the stages a target builds ------------------------------------------


def test_deps_record_from_copy_mount_and_onbuild() -> None:
    text = """\
FROM alpine AS a
ONBUILD COPY --from=c /x /x
FROM a AS b
FROM alpine AS c
COPY --from=0 /x /x
RUN --mount=from=B,target=/b true
FROM b
"""
    result = parse_dockerfile(text)
    assert result.stages == ("a", "b", "c", None)
    # b is built on a, so a's trigger (naming c) runs in b; d is built on b (not on a).
    assert result.deps == (frozenset(), frozenset({0, 2}), frozenset({0, 1}), frozenset({1, 2}))


def test_reachable_stages() -> None:
    text = "FROM alpine AS a\nFROM alpine AS b\nCOPY --from=a / /\nFROM alpine AS c\n"
    result = parse_dockerfile(text)
    assert reachable_stages(result, "") == frozenset({2})
    assert reachable_stages(result, "B") == frozenset({0, 1})
    assert reachable_stages(result, "a") == frozenset({0})
    assert reachable_stages(result, "missing") is None
    assert reachable_stages(DockerfileImages(uses=(), stages=(None,)), "") is None


def test_a_duplicated_stage_name_reaches_every_stage_holding_it() -> None:
    text = "FROM x1 AS a\nFROM x2 AS a\nFROM alpine\nCOPY --from=a / /\n"
    result = parse_dockerfile(text)
    assert reachable_stages(result, "") == frozenset({0, 1, 2})
    assert reachable_stages(result, "A") == frozenset({0, 1})


def test_a_cycle_of_stages_ends() -> None:
    text = "FROM alpine AS a\nCOPY --from=b / /\nFROM alpine AS b\nCOPY --from=a / /\n"
    assert reachable_stages(parse_dockerfile(text), "a") == frozenset({0, 1})


def test_classic_deps_know_only_earlier_stages() -> None:
    text = "FROM alpine AS a\nCOPY --from=b / /\nFROM alpine AS b\nCOPY --from=a / /\n"
    result = parse_dockerfile(text, builder="classic")
    assert result.deps == (frozenset(), frozenset({0}))
