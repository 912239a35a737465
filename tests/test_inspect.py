"""Request inspection reads parameters exactly as dockerd does, and refuses ambiguity."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from agent.core.inspection.http1 import RequestHead, parse_request_head
from agent.core.inspection.request import (
    After,
    EventAction,
    Inspection,
    InspectionError,
    LocalImage,
    Lookup,
    NeedJson,
    NeedTar,
    TarFindings,
    Wanted,
    inspect_head,
    inspect_json_body,
    local_image_wants,
    loses_last_name,
    nameless_outcome,
    onbuild_wants,
    resolved_by_name,
    with_build_lookups,
)
from agent.core.inspection.routes import route_request
from agent.core.policy.document import BuildsSetting, OnCreateSetting, Policy
from tests.policy_builders import policy

DIGEST = "sha256:" + "a" * 64


def _head(target: str, *headers: str) -> RequestHead:
    lines = [f"POST {target} HTTP/1.1", "Host: docker", *headers]
    return parse_request_head(("\r\n".join(lines) + "\r\n\r\n").encode())


def plan(target: str, p: Policy | None = None, *headers: str) -> Any:
    return inspect_head(route_request(target), _head(target, *headers), p or policy())


def pulled(target: str) -> list[tuple[str, bool]]:
    result = plan(target)
    assert isinstance(result, Inspection)
    return [(str(w.reference), w.all_tags) for w in result.wants]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("fromImage=alpine&tag=latest", ("docker.io/library/alpine:latest", False)),
        ("fromImage=alpine", ("docker.io/library/alpine", True)),
        ("fromImage=someuser%2Ftool:", ("docker.io/someuser/tool", True)),
        ("fromImage=alpine:3.20", ("docker.io/library/alpine:3.20", False)),
        ("fromImage=alpine:3.20&tag=latest", ("docker.io/library/alpine:latest", False)),
        (f"fromImage=alpine:3.20&tag={DIGEST}", (f"docker.io/library/alpine@{DIGEST}", False)),
        (f"fromImage=alpine@{DIGEST}", (f"docker.io/library/alpine@{DIGEST}", False)),
        (
            "fromImage=registry-1.docker.io/someuser/tool&tag=1",
            ("registry-1.docker.io/someuser/tool:1", False),
        ),
    ],
)
def test_pull_reference_is_what_the_daemon_pulls(query: str, expected: tuple[str, bool]) -> None:
    assert pulled(f"/v1.41/images/create?{query}") == [expected]


@pytest.mark.parametrize(
    "query",
    [
        "fromImage=alpine&fromImage=someuser/tool",
        "fromImage=alpine&tag=a&tag=b",
        "fromImage=someuser/Tool",
        "fromImage=alpine&tag=bad%20tag",
        "fromImage=%zz",
    ],
)
def test_ambiguous_or_invalid_pulls_are_refused(query: str) -> None:
    with pytest.raises(InspectionError):
        plan(f"/images/create?{query}")


def test_form_encoded_body_that_could_override_the_query_is_refused() -> None:
    with pytest.raises(InspectionError, match="form-encoded"):
        plan(
            "/images/create?fromImage=alpine",
            None,
            "Content-Type: application/x-www-form-urlencoded; charset=utf-8",
            "Content-Length: 3",
        )


def test_import_follows_the_load_setting() -> None:
    target = "/images/create?fromSrc=-&repo=someuser/tool&tag=1"
    denied = plan(target, policy(load="deny"))
    assert denied.setting is not None and not denied.setting.allowed
    allowed = plan(target, policy(load="allow"))
    assert allowed.setting is not None and allowed.setting.allowed
    checked = plan(target, policy(load="check"))
    assert [str(w.reference) for w in checked.wants] == ["docker.io/someuser/tool:1"]
    assert checked.wants[0].action is EventAction.IMPORT


def test_buildkit_follows_the_builds_setting() -> None:
    for target in ("/session", "/v1.41/grpc", "/build?version=2", "/build?remote=https://x/y.git"):
        denied = plan(target, policy(builds="deny"))
        assert denied.setting is not None and not denied.setting.allowed, target
        assert "DOCKER_BUILDKIT=0" in denied.setting.hint
        assert plan(target, policy(builds="allow")).setting.allowed


def build_finish(
    target: str, files: dict[str, bytes], links: dict[str, str] | None = None
) -> Inspection:
    result = plan(target)
    assert isinstance(result, NeedTar)
    captures = [(name, data) for name, data in files.items() if result.wanted(name)]
    return result.finish(TarFindings(dict(captures), captures, links or {}))


def test_classic_build_reads_the_named_dockerfile_with_build_args() -> None:
    files = {
        "Dockerfile": b"FROM alpine\n",
        "sub/Dockerfile.dev": b"ARG BASE=alpine\nFROM ${BASE}\nCOPY --from=someuser/tool:1 /a /a\n",
    }
    args = quote(json.dumps({"BASE": "someuser/base", "UNSET": None}))
    result = build_finish(f"/build?dockerfile=./sub/Dockerfile.dev&buildargs={args}", files)
    assert [str(w.reference) for w in result.wants] == [
        "docker.io/someuser/base",
        "docker.io/someuser/tool:1",
    ]
    assert result.wants[1].detail == "sub/Dockerfile.dev line 3: COPY --from=someuser/tool:1 /a /a"


def test_default_dockerfile_falls_back_to_lowercase_and_cache_from_is_checked() -> None:
    cache = quote('["someuser/cache:1"]')
    result = build_finish(f"/build?cachefrom={cache}", {"dockerfile": b"FROM alpine\n"})
    assert [str(w.reference) for w in result.wants] == [
        "docker.io/library/alpine",
        "docker.io/someuser/cache:1",
    ]


def test_build_without_its_dockerfile_or_with_a_linked_one_is_refused() -> None:
    with pytest.raises(InspectionError, match="cannot locate"):
        build_finish("/build", {"other": b""})
    with pytest.raises(InspectionError, match="link"):
        build_finish("/build", {}, {"Dockerfile": "real/Dockerfile"})


def test_linked_dockerfile_beats_the_lowercase_fallback() -> None:
    # dockerd opens `Dockerfile` through the link (symbolic, or hard to an uncaptured
    # file) and never looks at `dockerfile`.
    files = {"dockerfile": b"FROM alpine\n", "evil": b"FROM someuser/tool\n"}
    with pytest.raises(InspectionError, match="link"):
        build_finish("/build", files, {"Dockerfile": "evil"})


def test_dockerfile_reached_through_a_linked_directory_is_refused() -> None:
    result = plan("/build?dockerfile=prod/Dockerfile")
    assert isinstance(result, NeedTar)
    found = TarFindings(
        {"prod/Dockerfile": b"FROM alpine\n"},
        [("prod/Dockerfile", b"FROM alpine\n")],
        {},
        link_on_path=lambda name: "prod" if name.startswith("prod/") else None,
    )
    with pytest.raises(InspectionError, match="through the link 'prod'"):
        result.finish(found)


def test_classic_build_uses_the_classic_builders_argument_semantics() -> None:
    args = quote(json.dumps({"HTTP_PROXY": "someuser/tool", "TARGETARCH": "amd64"}))
    proxy = build_finish(
        f"/build?buildargs={args}", {"Dockerfile": b"FROM ${HTTP_PROXY:-alpine}\n"}
    )
    assert [str(w.reference) for w in proxy.wants] == ["docker.io/someuser/tool"]
    platform = build_finish(
        f"/build?buildargs={args}", {"Dockerfile": b"FROM ${TARGETARCH:-someuser/tool}\n"}
    )
    assert [str(w.reference) for w in platform.wants] == ["docker.io/someuser/tool"]


def test_classic_build_ignores_the_syntax_directive() -> None:
    result = build_finish("/build", {"Dockerfile": b"# syntax=docker/dockerfile:1\nFROM alpine\n"})
    assert [str(w.reference) for w in result.wants] == ["docker.io/library/alpine"]


def test_classic_build_pulls_a_later_stage_named_in_copy_from() -> None:
    dockerfile = b"FROM alpine\nCOPY --from=tool /a /a\nFROM alpine AS tool\n"
    result = build_finish("/build", {"Dockerfile": dockerfile})
    assert "docker.io/library/tool" in [str(w.reference) for w in result.wants]


@pytest.mark.parametrize("dockerfile", ["foo%5CDockerfile", "%5CDockerfile", "../x", "/../x"])
def test_dockerfile_paths_the_daemon_reads_otherwise_are_refused(dockerfile: str) -> None:
    with pytest.raises(InspectionError, match=r"backslash|leaves the build context"):
        plan(f"/build?dockerfile={dockerfile}")


def test_dockerfile_path_is_cleaned_like_filepath_join() -> None:
    files = {"sub/Dockerfile": b"FROM a\n"}
    result = build_finish("/build?dockerfile=/sub/./x/../Dockerfile", files)
    assert [str(w.reference) for w in result.wants] == ["docker.io/library/a"]


def test_heredoc_formed_by_a_line_continuation_is_read_both_ways() -> None:
    dockerfile = b"FROM alpine\nCOPY <\\\n<# /x\nFROM someuser/tool\n#\n"
    result = build_finish("/build", {"Dockerfile": dockerfile})
    assert "docker.io/someuser/tool" in [str(w.reference) for w in result.wants]


def test_dockerfile_is_read_as_parsers_without_the_check_directive_read_it() -> None:
    dockerfile = b"# check=skip=all\n# escape=`\nFROM alpine\nRUN true #`\nFROM someuser/tool\n"
    result = build_finish("/build", {"Dockerfile": dockerfile})
    assert "docker.io/someuser/tool" in [str(w.reference) for w in result.wants]


def test_non_ascii_content_type_is_refused() -> None:
    # Go's ToLower turns U+0130 into "i": the daemon would read a form-encoded body.
    with pytest.raises(InspectionError, match="not ASCII"):
        plan("/build", None, "Content-Type: appl\u0130cation/x-www-form-urlencoded")


def test_classic_build_checks_heredoc_bodies_as_instructions_too() -> None:
    with pytest.raises(InspectionError, match="heredoc"):
        build_finish("/build", {"Dockerfile": b"FROM alpine\nRUN <<EOF\nFROM someuser/tool\nEOF\n"})


def test_bad_build_args_are_refused() -> None:
    for args in ('{"A": 1}', "[1]", '{"A": "x", "A": "y"}', "{nope"):
        with pytest.raises(InspectionError):
            plan(f"/build?buildargs={quote(args)}")


def load_finish(files: list[tuple[str, bytes]]) -> Inspection:
    result = plan("/images/load", policy(load="check"))
    assert isinstance(result, NeedTar)
    every = [(n, d) for n, d in files if result.wanted(n)]
    return result.finish(TarFindings(dict(every), every, {}))


def test_load_names_come_from_manifest_repositories_and_oci_index() -> None:
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["someuser/tool:1.0"], "Layers": []}])
    repositories = json.dumps({"alpine": {"3": "abc"}})
    index = json.dumps(
        {
            "manifests": [
                {"annotations": {"io.containerd.image.name": "docker.io/acme/app:2"}},
                {"annotations": {"org.opencontainers.image.ref.name": "acme/app:3"}},
            ]
        }
    )
    result = load_finish(
        [
            ("manifest.json", manifest.encode()),
            ("repositories", repositories.encode()),
            ("index.json", index.encode()),
            ("manifest.json", json.dumps([{"RepoTags": ["nginx:1"]}]).encode()),
        ]
    )
    assert [str(w.reference) for w in result.wants] == [
        "docker.io/someuser/tool:1.0",
        "docker.io/library/alpine:3",
        "docker.io/acme/app:2",
        "docker.io/acme/app:3",
        "docker.io/library/nginx:1",
    ]


@pytest.mark.parametrize(
    ("member", "content"),
    [
        ("manifest.json", [{"Config": "c.json", "RepoTags": None, "Layers": []}]),
        ("manifest.json", [{"Config": "c.json", "Layers": []}]),
        ("manifest.json", [{"RepoTags": ["acme/app:1"]}, {"RepoTags": []}]),
        (
            "index.json",
            {"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "1"}}]},
        ),
        ("index.json", {"manifests": [{"digest": "sha256:" + "a" * 64}]}),
    ],
)
def test_load_of_an_image_with_no_name_is_refused_under_check(member: str, content: Any) -> None:
    # The daemon would keep it untagged, to be run by ID: nothing to decide it by.
    with pytest.raises(InspectionError, match="no name") as info:
        load_finish([(member, json.dumps(content).encode())])
    assert info.value.status == 403


def test_import_without_a_name_is_refused_under_check_only() -> None:
    with pytest.raises(InspectionError, match="without a name"):
        plan("/images/create?fromSrc=-", policy(load="check"))
    assert plan("/images/create?fromSrc=-", policy(load="allow")).setting.allowed


@pytest.mark.parametrize("endpoint", ["commit", "import"])
def test_onbuild_in_changes_is_decided(endpoint: str) -> None:
    changes = (
        "changes="
        + quote("ENV A=1")
        + "&changes="
        + quote("ONBUILD COPY --from=someuser/tool /x /y")
    )
    if endpoint == "commit":
        target = f"/commit?container=c1&repo=acme/app&{changes}"
        result = inspect_json_body(route_request(target), b"")
    else:
        result = plan(f"/images/create?fromSrc=-&repo=acme/app&{changes}", policy(load="check"))
    assert "docker.io/someuser/tool" in [str(w.reference) for w in result.wants]
    assert all(w.detail == "--change" for w in result.wants if "someuser" in str(w.reference))


def test_onbuild_triggers_of_a_local_base_are_decided() -> None:
    image = LocalImage.from_daemon(
        {
            "Id": DIGEST,
            "RepoTags": ["acme/base:1"],
            "Config": {"OnBuild": ["COPY --from=someuser/tool /bin/x /x", "RUN true"]},
        }
    )
    wants = onbuild_wants("acme/base:1", image, EventAction.BUILD)
    assert [str(w.reference) for w in wants] == ["docker.io/someuser/tool"]


@pytest.mark.parametrize("key", ["repotags", "REPOTAGS", "RepoTag\u017f"])
def test_load_manifest_fields_match_in_any_case_like_go(key: str) -> None:
    manifest = json.dumps([{"Config": "c.json", key: ["someuser/tool:1.0"], "Layers": []}])
    result = load_finish([("manifest.json", manifest.encode())])
    assert [str(w.reference) for w in result.wants] == ["docker.io/someuser/tool:1.0"]


def test_load_manifest_with_two_spellings_of_repotags_is_refused() -> None:
    manifest = json.dumps([{"RepoTags": None, "repoTags": ["someuser/tool:1.0"]}])
    with pytest.raises(InspectionError, match="several keys"):
        load_finish([("manifest.json", manifest.encode())])


def test_oci_index_fields_match_in_any_case_like_go() -> None:
    index = {
        "Manifests": [{"Annotations": {"io.containerd.image.name": "docker.io/someuser/tool:o"}}]
    }
    result = load_finish([("index.json", json.dumps(index).encode())])
    assert [str(w.reference) for w in result.wants] == ["docker.io/someuser/tool:o"]


def test_load_with_unreadable_metadata_is_refused() -> None:
    for data in (b"{", b'{"a": 1}', b'[{"RepoTags": "x"}]', b'[{"RepoTags": ["Bad/Name"]}]'):
        with pytest.raises(InspectionError):
            load_finish([("manifest.json", data)])


def test_load_setting_deny_and_allow() -> None:
    assert not plan("/images/load", policy(load="deny")).setting.allowed
    assert plan("/images/load", policy(load="allow")).setting.allowed


def json_route(target: str) -> Any:
    result = plan(target)
    assert isinstance(result, NeedJson)
    return result.route


def test_container_create_image_is_found_case_insensitively() -> None:
    route = json_route("/v1.41/containers/create")
    result = inspect_json_body(route, b'{"image": "someuser/tool", "Cmd": ["x"]}')
    assert [str(w.reference) for w in result.wants] == ["docker.io/someuser/tool"]
    assert [(lk.name, lk.after) for lk in result.lookups] == [("someuser/tool", After.CONTAINER)]


def test_container_create_with_two_image_keys_is_refused() -> None:
    route = json_route("/containers/create")
    for body in (
        b'{"Image": "alpine", "image": "someuser/tool"}',
        b'{"Image": "alpine", "Image": "someuser/tool"}',
    ):
        with pytest.raises(InspectionError):
            inspect_json_body(route, body)


def test_container_create_by_id_needs_a_daemon_lookup() -> None:
    route = json_route("/containers/create")
    for image in ("b" * 64, "sha256:" + "b" * 64):
        result = inspect_json_body(route, json.dumps({"Image": image}).encode())
        assert result.wants == () and [lk.name for lk in result.lookups] == [image]


def test_container_create_by_short_id_is_also_a_name_until_the_daemon_says() -> None:
    """`abc123def456` parses as an official image's name; the daemon may find it by ID."""
    route = json_route("/containers/create")
    result = inspect_json_body(route, b'{"Image": "abc123def456"}')
    assert [str(w.reference) for w in result.wants] == ["docker.io/library/abc123def456"]
    assert [lk.name for lk in result.lookups] == ["abc123def456"]


def _image(*names: str, image_id: str = "sha256:" + "c" * 64) -> LocalImage:
    tags = tuple(n for n in names if "@" not in n)
    return LocalImage(image_id, tags, tuple(n for n in names if "@" in n))


@pytest.mark.parametrize(
    ("name", "names", "by_name"),
    [
        ("someuser/tool", ["someuser/tool:latest"], True),
        ("docker.io/someuser/tool:latest", ["someuser/tool:latest"], True),
        ("index.docker.io/someuser/tool", ["someuser/tool:latest"], True),
        ("someuser/tool:1.0", ["someuser/tool:latest"], False),
        ("alpine", ["alpine:latest", "someuser/tool:latest"], True),
        (f"someuser/tool@{DIGEST}", [f"someuser/tool@{DIGEST}"], True),
        (f"someuser/tool:x@{DIGEST}", [f"someuser/tool@{DIGEST}"], True),
        (f"someuser/tool@{DIGEST}", ["someuser/tool:latest"], False),
        # ID prefixes parse as official names; the image does not hold that name
        ("cccccccccccc", ["someuser/tool:latest"], False),
        ("sha256:cccc", ["someuser/tool:latest"], False),
        ("c" * 64, ["someuser/tool:latest"], False),
        ("sha256:" + "c" * 64, [], False),
        # ... unless it does: the reference store is asked first
        ("cccccccccccc", ["cccccccccccc:latest"], True),
        ("registry-1.docker.io/someuser/tool", ["someuser/tool:latest"], False),
        ("Bad/Name", ["someuser/tool:latest"], False),
    ],
)
def test_a_local_image_is_found_by_name_only_if_it_holds_that_name(
    name: str, names: list[str], by_name: bool
) -> None:
    assert resolved_by_name(name, _image(*names)) is by_name


def test_every_name_of_a_local_image_is_decided() -> None:
    image = _image("acme/app:evil", "<none>:<none>", f"someuser/tool@{DIGEST}")
    wants = local_image_wants("acme/app:evil", image, EventAction.CREATE)
    assert [str(w.reference) for w in wants] == [
        "docker.io/acme/app:evil",
        f"docker.io/someuser/tool@{DIGEST}",
    ]
    assert {w.detail for w in wants} == {"local image acme/app:evil"}


def test_content_without_names_is_allowed_only_as_an_uninspected_builds_output() -> None:
    assert not _image("<none>:<none>", "<none>@<none>").named
    assert _image("a:1").named
    denied = nameless_outcome("abc123", EventAction.CREATE, BuildsSetting.DENY)
    assert not denied.allowed and denied.setting == "on_create" and denied.hint
    assert nameless_outcome("abc123", EventAction.CREATE, BuildsSetting.ALLOW).allowed


def test_daemon_image_description_is_read_strictly() -> None:
    info = {"Id": "sha256:" + "d" * 64, "RepoTags": ["a:1"], "RepoDigests": None, "Parent": ""}
    assert LocalImage.from_daemon(info) == LocalImage("sha256:" + "d" * 64, ("a:1",), ())
    bad_answers: list[object] = [
        {},
        [],
        {"Id": 1},
        {"Id": "x", "RepoTags": "a:1"},
        {"Id": "x", "RepoTags": [1]},
    ]
    for bad in bad_answers:
        with pytest.raises(InspectionError):
            LocalImage.from_daemon(bad)


@pytest.mark.parametrize(
    ("target", "source", "new_name"),
    [
        (
            "/v1.41/images/someuser/tool/tag?repo=acme%2Fapp&tag=evil",
            "someuser/tool",
            "docker.io/acme/app:evil",
        ),
        ("/images/abc123/tag?repo=acme/app", "abc123", "docker.io/acme/app:latest"),
        ("/images/x:1/tag?repo=acme/app:one&tag=two", "x:1", "docker.io/acme/app:two"),
        (
            f"/images/sha256:{'e' * 64}/tag?repo=acme/app:one",
            f"sha256:{'e' * 64}",
            "docker.io/acme/app:one",
        ),
    ],
)
def test_tag_looks_up_its_source_and_names_the_new_tag(
    target: str, source: str, new_name: str
) -> None:
    result = inspect_json_body(json_route(target), b"")
    assert result.wants == ()
    assert result.lookups == (
        Lookup(source, EventAction.TAG, after=After.TAG, new_name=new_name),
        Lookup(new_name, EventAction.TAG, moves=True),
    )


def test_tag_with_bad_or_repeated_parameters_is_refused() -> None:
    for query in ("repo=acme/app&repo=x", "repo=acme/app&tag=a&tag=b", "repo=", "repo=Bad"):
        with pytest.raises(InspectionError):
            inspect_json_body(json_route(f"/images/alpine/tag?{query}"), b"")
    with pytest.raises(InspectionError):
        inspect_json_body(json_route(f"/images/alpine/tag?repo=a%40{DIGEST}"), b"")


def test_commit_looks_up_the_containers_image() -> None:
    result = inspect_json_body(json_route("/v1.41/commit?container=web&repo=acme/app"), b"{}")
    assert result.lookups == (
        Lookup("web", EventAction.COMMIT, container=True, after=After.COMMIT),
        Lookup("docker.io/acme/app:latest", EventAction.COMMIT, moves=True),
    )
    result = inspect_json_body(json_route("/commit?container=web"), b"")
    assert result.lookups == (
        Lookup("web", EventAction.COMMIT, container=True, after=After.COMMIT),
    )
    assert inspect_json_body(json_route("/commit?repo=x"), b"") == Inspection()
    with pytest.raises(InspectionError):
        inspect_json_body(json_route("/commit?container=a&container=b"), b"")


def test_a_classic_builds_images_are_also_looked_up_locally() -> None:
    ref = inspect_json_body(json_route("/containers/create"), b'{"Image": "alpine"}').wants[0]
    build = Wanted("abc123", ref.reference, EventAction.BUILD, detail="Dockerfile line 1: FROM")
    again = Wanted("abc123", ref.reference, EventAction.BUILD, detail="Dockerfile line 3: FROM")
    pull = Wanted("x", ref.reference, EventAction.PULL)
    result = with_build_lookups(Inspection(wants=(build, again, pull)))
    assert result.wants == (build, again, pull)
    assert result.lookups == (Lookup("abc123", EventAction.BUILD),)
    targets = ["someuser/tool", "acme/app:1", "someuser/tool", "Bad", f"a@{DIGEST}"]
    result = with_build_lookups(Inspection(wants=(build,)), targets)
    assert result.lookups == (
        Lookup("abc123", EventAction.BUILD),
        Lookup("docker.io/someuser/tool:latest", EventAction.BUILD, moves=True),
        Lookup("docker.io/acme/app:1", EventAction.BUILD, moves=True),
    )


@pytest.mark.parametrize(
    ("name", "names", "loses"),
    [
        ("someuser/tool:latest", ["someuser/tool:latest"], True),
        ("docker.io/someuser/tool", ["someuser/tool:latest"], True),
        ("someuser/tool:latest", ["someuser/tool:latest", "someuser/tool:1.0"], False),
        ("someuser/tool:latest", ["someuser/tool:latest", f"someuser/tool@{DIGEST}"], False),
        ("someuser/tool:latest", ["acme/app:x"], False),  # found by ID: it holds no such name
        ("someuser/tool:latest", [], False),
    ],
)
def test_a_name_is_the_last_one_only_if_the_content_has_no_other(
    name: str, names: list[str], loses: bool
) -> None:
    assert loses_last_name(name, _image(*names)) is loses


def test_tag_and_commit_are_not_inspected_when_on_create_allows() -> None:
    for target in ("/images/alpine/tag?repo=x", "/commit?container=web"):
        assert plan(target, policy(on_create="allow")) == Inspection()
        assert plan(target, policy(on_create="check"), "Content-Length: 0") is not None
    with pytest.raises(InspectionError):
        plan(
            "/images/alpine/tag",
            policy(),
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Length: 8",
        )


def test_service_image_is_looked_up_when_on_create_checks() -> None:
    route = json_route("/services/create")
    body = json.dumps({"TaskTemplate": {"ContainerSpec": {"Image": "sha256:" + "f" * 64}}})
    result = inspect_json_body(route, body.encode())
    assert result.wants == () and [lk.name for lk in result.lookups] == ["sha256:" + "f" * 64]
    body = json.dumps({"TaskTemplate": {"ContainerSpec": {"Image": "abc123"}}})
    result = inspect_json_body(route, body.encode(), OnCreateSetting.ALLOW)
    assert [str(w.reference) for w in result.wants] == ["docker.io/library/abc123"]
    assert result.lookups == ()


def test_container_create_is_not_inspected_when_on_create_and_host_access_allow() -> None:
    free = policy(on_create="allow", containers={"host_access": "allow"})
    result = plan("/containers/create", free)
    assert isinstance(result, Inspection) and not result.wants


def test_container_create_with_on_create_allow_is_read_for_host_access_only() -> None:
    assert isinstance(plan("/containers/create", policy(on_create="allow")), NeedJson)
    body = json.dumps({"Image": "someuser/tool", "HostConfig": {"Privileged": True}})
    result = inspect_json_body(
        route_request("/containers/create"), body.encode(), OnCreateSetting.ALLOW
    )
    assert result.wants == () and result.lookups == ()
    assert result.host.refused == ("--privileged",)


def test_service_images_are_found() -> None:
    route = json_route("/v1.41/services/create")
    body = {"Name": "web", "taskTemplate": {"ContainerSpec": {"Image": "someuser/tool:1"}}}
    result = inspect_json_body(route, json.dumps(body).encode())
    assert [str(w.reference) for w in result.wants] == ["docker.io/someuser/tool:1"]


def test_plugin_and_distribution_names() -> None:
    assert [str(w.reference) for w in plan("/plugins/pull?remote=vieux/sshfs&name=x").wants] == [
        "docker.io/vieux/sshfs"
    ]
    result = plan("/v1.41/distribution/someuser/tool:1/json")
    assert [str(w.reference) for w in result.wants] == ["docker.io/someuser/tool:1"]
