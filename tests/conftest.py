"""Session fixtures shared by every test module: ONE private dockerd + registry per session.

`docker_env` starts the real Docker environment of bench/realdocker.py the first time a test
asks for it, and stops it at the end of the session; `seeded` pushes the tiny test images to
its registry mirror. Without the machine requirements (root, Debian's docker.io,
docker-registry, busybox-static) tests that use them skip locally and fail under CI (CI=true),
where a skipped integration test would hide a broken machine setup.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from bench.realdocker import (
    DockerEnv,
    SeededImage,
    docker,
    image_present,
    missing_requirements,
    seed_image,
    start_docker_env,
    stop_docker_env,
)
from tests.agent_process import (
    DENIED_REPOSITORY,
    Reporter,
    registry_image_id,
    remove_images,
    skip_or_fail,
)
from tests.desktop import Desktop, start_desktop, stop_desktop
from tests.desktop import missing_requirements as desktop_missing_requirements
from tests.keychain import KeychainProcess, start_keychain, stop_keychain
from tests.keychain import missing_requirements as keychain_missing_requirements
from tests.oidc_provider import (
    OIDCProvider,
    installed_version,
    start_oidc_provider,
    stop_oidc_provider,
)
from tests.oidc_provider import (
    missing_requirements as oidc_missing_requirements,
)

SEEDED = (
    "alpine",  # Docker Official Image
    "nginx",  # Docker Official Image
    "acme/app",  # the test org's own namespace
    "verifiedco/db",  # a Verified Publisher
    "someuser/tool",  # community
    "someuser/tool:1.0",  # community, a second tag (distinct content and digest)
    "someuser/nginx",  # community, with an official image of the same name
)
"""Images pushed to the local registry (the daemon's docker.io mirror), by Docker Hub name."""


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Reporter:
    """Print a line (timings) in the test run's output, past output capture."""
    plugins = request.config.pluginmanager

    def write(line: str) -> None:
        reporter = plugins.get_plugin("terminalreporter")
        capture = plugins.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is None:
            reporter.write_line(line)
            return
        with capture.global_and_fixture_disabled():
            if reporter.verbosity <= 0:
                reporter.write("\n")  # end the line of progress dots
            reporter.write_line(line)

    return write


@pytest.fixture(scope="session")
def docker_env(tmp_path_factory: pytest.TempPathFactory, report: Reporter) -> Iterator[DockerEnv]:
    """A private registry + dockerd for the whole session, stopped at the end."""
    problems = missing_requirements()
    if problems:
        skip_or_fail("real Docker environment unavailable: " + "; ".join(problems))
    env = start_docker_env(tmp_path_factory.mktemp("realdocker"))
    report(f"realdocker: dockerd answered /_ping {env.startup_seconds:.2f} s after start")
    try:
        yield env
    finally:
        started = time.monotonic()
        stop_docker_env(env)
        report(f"realdocker: stopped in {time.monotonic() - started:.2f} s")


@pytest.fixture(scope="session")
def seeded(docker_env: DockerEnv, report: Reporter) -> dict[str, SeededImage]:
    """SEEDED images pushed to the local registry, by name as written in SEEDED."""
    images: dict[str, SeededImage] = {}
    started = time.monotonic()
    for name in SEEDED:
        images[name] = seed_image(docker_env, name)
    report(f"realdocker: seeded {len(images)} images in {time.monotonic() - started:.2f} s")
    return images


@pytest.fixture(scope="session")
def oidc_provider(
    tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[OIDCProvider]:
    """A real OpenID provider (npm oidc-provider, tests/oidc) over HTTPS on 127.0.0.1 for the
    whole session, its CA in `ca_bundle`; stopped at the end. Skips locally without Node.js
    or tests/oidc/node_modules, fails under CI. Tests that change its settings use
    `oidc_provider.settings(...)` (restored after the block)."""
    problems = oidc_missing_requirements()
    if problems:
        skip_or_fail("OpenID provider unavailable: " + "; ".join(problems))
    provider = start_oidc_provider(tmp_path_factory.mktemp("oidc"))
    report(
        f"oidc: oidc-provider {installed_version()} answered discovery "
        f"{provider.startup_seconds:.2f} s after start ({provider.issuer})"
    )
    try:
        yield provider
    finally:
        stop_oidc_provider(provider)


@pytest.fixture
def container_name(docker_env: DockerEnv) -> Iterator[str]:
    """A unique container name; the container is force-removed (directly) afterwards."""
    name = f"pgtest-{uuid.uuid4().hex[:12]}"
    yield name
    docker(docker_env, "rm", "--force", name, check=False)


@pytest.fixture(scope="session")
def denied_image_ids(docker_env: DockerEnv, seeded: dict[str, SeededImage]) -> frozenset[str]:
    """Image IDs of someuser/tool:latest and :1.0: the daemon holds them under any name
    or tag they come in by (registry aliases, digests, loads)."""
    tags = [seeded[name].tag for name in seeded if name.startswith(DENIED_REPOSITORY)]
    return frozenset(registry_image_id(docker_env, DENIED_REPOSITORY, tag) for tag in tags)


@pytest.fixture
def denied_image_absent(docker_env: DockerEnv, denied_image_ids: frozenset[str]) -> Iterator[None]:
    """The daemon holds nothing of someuser/tool before the test; removed again after it."""
    remove_images(docker_env, DENIED_REPOSITORY, denied_image_ids)
    yield
    remove_images(docker_env, DENIED_REPOSITORY, denied_image_ids)


@pytest.fixture
def alpine_local(docker_env: DockerEnv) -> None:
    """alpine is in the daemon (pulled directly if need be), for containers to run."""
    if not image_present(docker_env, "alpine"):
        docker(docker_env, "pull", "alpine")


@pytest.fixture(scope="session")
def keychain(
    tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[KeychainProcess]:
    """A private Secret Service (gnome-keyring-daemon on its own D-Bus session bus, an
    unlocked login keyring in a temp dir) for the whole session; `keychain.env` reaches it.
    Skips locally without dbus-daemon or gnome-keyring-daemon, fails under CI."""
    problems = keychain_missing_requirements()
    if problems:
        skip_or_fail("private keychain unavailable: " + "; ".join(problems))
    process = start_keychain(tmp_path_factory.mktemp("keychain"))
    report(f"keychain: gnome-keyring answered {process.startup_seconds:.2f} s after start")
    try:
        yield process
    finally:
        stop_keychain(process)


@pytest.fixture(scope="session")
def desktop(tmp_path_factory: pytest.TempPathFactory, report: Reporter) -> Iterator[Desktop]:
    """A real X desktop for the whole session (tests/desktop.py): Xvfb on a free display, a
    private D-Bus session bus, trayer as the XEmbed tray and dunst as the notification
    daemon; `desktop.env` reaches them. Skips locally without Xvfb, trayer, dunst,
    x11-utils or PySide6, fails under CI."""
    problems = desktop_missing_requirements()
    if problems:
        skip_or_fail("real desktop unavailable: " + "; ".join(problems))
    running = start_desktop(tmp_path_factory.mktemp("desktop"))
    report(
        f"desktop: Xvfb {running.display}, trayer and dunst ready"
        f" {running.startup_seconds:.2f} s after start"
    )
    try:
        yield running
    finally:
        stop_desktop(running)
