"""The pure reading and judging of container settings (agent.core.inspection.host_access)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.core.inspection.buildkit.decide import upfront
from agent.core.inspection.buildkit.inputs import from_solve_request
from agent.core.inspection.buildkit.protos.control_pb2 import SolveRequest
from agent.core.inspection.host_access import (
    HostAccess,
    HostAccessError,
    HostPath,
    PathFacts,
    Protection,
    clean_path,
    from_container_config,
    from_exec_config,
    from_plugin_privileges,
    from_plugin_settings,
    from_service_spec,
    from_start_body,
    from_volume_create,
    judge,
    normalize_capability,
)
from agent.core.inspection.routes import Endpoint, route_request
from agent.core.policy.document import PolicyError
from tests.policy_builders import policy

NONE = Protection()


def facts(resolved: dict[str, str]) -> dict[str, PathFacts]:
    """Resolved paths alone, with nothing known of who may reach them."""
    return {path: PathFacts(to) for path, to in resolved.items()}


def problems(host: dict[str, Any], resolved: dict[str, str] | None = None) -> list[str]:
    access = from_container_config({"Image": "alpine", "HostConfig": host})
    return judge(access, facts(resolved or {}), NONE)


@pytest.mark.parametrize(
    ("cap", "normal"),
    [
        ("sys_admin", "CAP_SYS_ADMIN"),
        ("CAP_SYS_ADMIN", "CAP_SYS_ADMIN"),
        ("Cap_Sys_Admin", "CAP_SYS_ADMIN"),
        ("all", "ALL"),
        ("ALL", "ALL"),
    ],
)
def test_capabilities_are_normalized_as_moby_does(cap: str, normal: str) -> None:
    assert normalize_capability(cap) == normal


@pytest.mark.parametrize(
    "host",
    [
        {"Privileged": True},
        {"PidMode": "host"},
        {"PidMode": "HOST"},
        {"IpcMode": "host"},
        {"UsernsMode": "host"},
        {"CapAdd": ["sys_module"]},
        {"CapAdd": ["ALL"]},
        {"Capabilities": ["CAP_BPF"]},
        {"SecurityOpt": ["seccomp=unconfined"]},
        {"SecurityOpt": ["seccomp:unconfined"]},  # the legacy separator
        {"SecurityOpt": ["apparmor=unconfined"]},
        {"SecurityOpt": ["label=disable"]},
        {"SecurityOpt": ["label:type:spc_t"]},
        {"SecurityOpt": ["systempaths=unconfined"]},
        {"SecurityOpt": ["writable-cgroups=true"]},
        {"SecurityOpt": ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']},
        {"DeviceCgroupRules": ["a *:* rwm"]},
        {"MaskedPaths": []},
        {"ReadonlyPaths": []},
        {"Sysctls": {"net.ipv4.ip_forward": "1"}, "NetworkMode": "host"},
        {"Mounts": [{"Type": "npipe", "Source": r"\\.\pipe\docker_engine", "Target": "/p"}]},
        {"Mounts": [{"Type": "something-new", "Source": "x", "Target": "/x"}]},
    ],
)
def test_settings_that_hand_over_the_host(host: dict[str, Any]) -> None:
    assert problems(host)


@pytest.mark.parametrize(
    "host",
    [
        {},
        {"Privileged": False, "PidMode": "", "IpcMode": "private", "NetworkMode": "host"},
        {"PidMode": "container:abc"},
        {"CapAdd": ["SYS_PTRACE", "NET_ADMIN", "cap_net_raw"]},
        {"SecurityOpt": ["no-new-privileges", "no-new-privileges:true", "label=level:s0:c1"]},
        {"Sysctls": {"net.ipv4.ip_forward": "1"}},
        {"Mounts": [{"Type": "tmpfs", "Target": "/t"}, {"Type": "volume", "Target": "/v"}]},
        {"Binds": ["data:/data", "/home/dev/project:/src", "/tmp/x:/x:rw", "/anon"]},
        {"Binds": ["/etc/localtime:/etc/localtime:ro", "/usr/share:/s:ro"]},
        {"Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"}]},
        {"Devices": [{"PathOnHost": "/dev/dri/renderD128"}]},
        {"MaskedPaths": None},
        {"DeviceRequests": [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]},
    ],
)
def test_ordinary_settings_pass(host: dict[str, Any]) -> None:
    assert problems(host) == []


@pytest.mark.parametrize(
    ("bind", "why"),
    [
        ("/:/host", "whole file system"),
        ("//:/host", "whole file system"),
        ("/run:/r", "/run"),
        ("/var/run/docker.sock:/s", "/var/run"),
        ("/var:/v", "holds the host's /var/run"),
        ("/etc:/e:ro", "holds the host's /etc/shadow"),
        ("/etc/ssh:/e:ro", "/etc/ssh"),
        ("/usr:/u", "writable"),
        ("/usr/bin:/u:rw", "writable"),
        ("/root/.ssh:/k:ro", "/root"),
        ("/home/../run:/r", "/run"),
        ("/proc/1/root:/r", "/proc"),
        ("/sys/fs/cgroup:/c", "/sys"),
        ("/dev/sda:/d", "/dev"),
        ("/var/lib/docker:/d", "/var/lib"),
        ("/boot:/b:ro", "/boot"),
        ("/opt/pullgate:/p:ro", "/opt/pullgate"),
    ],
)
def test_binds_of_the_hosts_system_paths(bind: str, why: str) -> None:
    found = problems({"Binds": [bind]})
    assert len(found) == 1 and why in found[0], found


def test_a_link_is_judged_where_it_leads() -> None:
    found = problems({"Binds": ["/home/dev/link:/h"]}, {"/home/dev/link": "/"})
    assert found == [
        "-v /home/dev/link:/h: /home/dev/link (that is /) is the host's whole file system"
    ]
    assert problems({"Binds": ["/home/dev/ok:/h"]}, {"/home/dev/ok": "/home/dev/real"}) == []


def test_runtime_protection_and_the_agents_own_socket() -> None:
    protection = Protection(
        no_bind=("/tmp/daemon/docker.sock", "/srv/pullgate-state"),
        exact_allowed=("/tmp/agent/docker.sock",),
        allowed=("/var/lib/shared-cache",),
    )

    def judged(bind: str) -> list[str]:
        return judge(from_container_config({"HostConfig": {"Binds": [bind]}}), {}, protection)

    assert judged("/tmp/daemon/docker.sock:/s")
    assert judged("/tmp/daemon:/d")  # holds the daemon's socket
    assert judged("/tmp:/t")
    assert judged("/srv/pullgate-state/policy:/p:ro")
    assert judged("/tmp/agent/docker.sock:/var/run/docker.sock") == []
    assert judged("/tmp/agent:/a") == []  # only the socket's own directory, nothing kept
    assert judged("/var/lib/shared-cache/pip:/c") == []
    assert judged("/var/lib/other:/o")


def test_devices_outside_the_allowed_few_and_through_links() -> None:
    def judged(path: str, resolved: str | None = None) -> list[str]:
        access = from_container_config({"HostConfig": {"Devices": [{"PathOnHost": path}]}})
        return judge(access, facts({path: resolved or path}), NONE)

    assert judged("/dev/kvm") == [] and judged("/dev/net/tun") == []
    assert "host device" in judged("/dev/sda")[0]
    assert "host device" in judged("/dev/mem")[0]
    assert "host device" in judged("/dev")[0]  # a directory: every device under it
    assert "symbolic link" in judged("/tmp/fuse", "/dev/fuse")[0]
    assert "must be absolute" in judged("sda")[0]


@pytest.mark.parametrize(
    ("opts", "refused"),
    [
        ({"type": "none", "o": "bind", "device": "/"}, True),
        ({"Type": "none", "O": "rbind,ro", "Device": "/etc"}, True),
        ({"type": "ext4", "device": "/dev/sda1"}, True),  # the host's disk
        ({"type": "none", "o": "bind", "device": "/home/dev/data"}, False),
        ({"type": "tmpfs", "device": "tmpfs", "o": "size=100m"}, False),
        ({"type": "nfs", "o": "addr=10.0.0.1,rw", "device": ":/export"}, False),
    ],
)
def test_local_volumes_of_host_paths(opts: dict[str, str], refused: bool) -> None:
    access = from_volume_create({"Name": "v", "Driver": "local", "DriverOpts": opts})
    assert bool(judge(access, {}, NONE)) is refused
    mount = {"Type": "volume", "Target": "/v", "VolumeOptions": {"DriverConfig": {"Options": opts}}}
    access = from_container_config({"HostConfig": {"Mounts": [mount]}})
    assert bool(judge(access, {}, NONE)) is refused


def test_other_volume_drivers_are_not_host_paths() -> None:
    body = {"Driver": "rexray", "DriverOpts": {"device": "/"}}
    assert not from_volume_create(body)


def test_services_exec_start_and_plugins() -> None:
    spec = {
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "alpine",
                "Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}],
                "CapabilityAdd": ["CAP_SYS_ADMIN"],
                "Privileges": {"Seccomp": {"Mode": "unconfined"}, "AppArmor": {"Mode": "disabled"}},
            }
        }
    }
    found = judge(from_service_spec(spec), {}, NONE)
    assert len(found) == 4, found
    assert not from_service_spec({"TaskTemplate": {"ContainerSpec": {"Image": "alpine"}}})
    assert from_exec_config({"Privileged": True}).refused
    assert not from_exec_config({"privileged": False, "User": "root"})
    assert from_start_body({"Binds": ["/:/h"]}).refused
    assert not from_start_body(None) and not from_start_body({})
    privileges = [
        {"Name": "network", "Value": ["host"]},
        {"Name": "mount", "Value": ["/var/lib/docker/plugins/"]},
        {"Name": "capabilities", "Value": ["CAP_SYS_ADMIN"]},
    ]
    assert len(from_plugin_privileges(privileges).refused) == 2
    assert not from_plugin_privileges([{"Name": "network", "Value": ["host"]}])


@pytest.mark.parametrize(
    "config",
    [
        {"HostConfig": {"Privileged": "true"}},
        {"HostConfig": {"Privileged": 1}},
        {"HostConfig": {"Privileged": False, "privileged": True}},
        {"HostConfig": {"Binds": "/:/h"}},
        {"HostConfig": {"Binds": [1]}},
        {"HostConfig": {"Mounts": ["/:/h"]}},
        {"HostConfig": {"Devices": [{"PathOnHost": 5}]}},
        {"HostConfig": []},
        {"HostConfig": {"MaskedPaths": "x"}},
    ],
)
def test_bodies_the_daemon_would_not_read_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(HostAccessError):
        from_container_config(config)


def test_clean_path_folds_as_go_does() -> None:
    assert clean_path("//etc//./ssh/../shadow") == "/etc/shadow"
    assert clean_path("/") == "/"


def test_an_empty_access_is_falsy_and_adds_up() -> None:
    a = HostAccess(("--privileged",))
    b = HostAccess(paths=(HostPath("/", False, "bind", "-v /:/h"),))
    assert not HostAccess() and a and b and (a + b).paths == b.paths


def test_the_policy_section() -> None:
    p = policy(containers={"host_access": "allow", "allowed_host_paths": ["/srv/data"]})
    assert p.containers.host_access == "allow"
    assert p.containers.allowed_host_paths == ("/srv/data",)
    assert policy().containers.host_access == "deny"
    for bad in ("relative", "/a/../b", "//a", "/", "/a/"):
        with pytest.raises(PolicyError, match="allowed_host_paths"):
            policy(containers={"allowed_host_paths": [bad]})
    with pytest.raises(PolicyError, match="host_access"):
        policy(containers={"host_access": "maybe"})
    with pytest.raises(PolicyError, match="unknown field"):
        policy(containers={"hostaccess": "deny"})


def _string_field(number: int, value: bytes) -> bytes:
    assert len(value) < 128
    return bytes([number << 3 | 2, len(value)]) + value


@pytest.mark.parametrize(
    ("entitlements", "refused"),
    [
        ((b"security.insecure",), True),
        ((b"network.host", b"device=nvidia.com/gpu=all"), True),
        ((b"network.host",), False),
        ((), False),
    ],
)
def test_build_entitlements_that_hand_over_the_host(
    entitlements: tuple[bytes, ...], refused: bool
) -> None:
    """`docker buildx build --allow security.insecure`: privileged RUN steps."""
    request = SolveRequest(Ref="r", Session="s", Frontend="dockerfile.v0")
    payload = request.SerializeToString() + b"".join(_string_field(9, e) for e in entitlements)
    inputs = from_solve_request(payload)
    assert inputs.entitlements == tuple(e.decode() for e in entitlements)
    setting = upfront(inputs, policy()).setting
    assert (setting is not None and not setting.allowed) is refused
    if refused:
        assert setting is not None and setting.setting == "containers.host_access"
    free = upfront(inputs, policy(containers={"host_access": "allow"})).setting
    assert free is None


# --- red-team findings (tests/test_redteam_host_access.py has them against the daemon) ---


def test_host_config_fields_at_the_top_level_are_read_too() -> None:
    """dockerd's ContainerConfigWrapper embeds a deprecated HostConfig: without a
    "HostConfig" key, top-level fields are the container's HostConfig."""
    assert judge(from_container_config({"Image": "a", "Privileged": True}), {}, NONE)
    assert judge(from_container_config({"Image": "a", "binds": ["/:/h"]}), {}, NONE)
    both = {"Image": "a", "HostConfig": {}, "PidMode": "host"}
    assert judge(from_container_config(both), {}, NONE)  # ambiguous: judged anyway


def test_a_bind_is_cleaned_before_its_links_are_followed() -> None:
    (bind,) = from_container_config({"HostConfig": {"Binds": ["/home/u/d/../l:/h"]}}).paths
    assert bind.lookup == "/home/u/l"
    assert judge(HostAccess(paths=(bind,)), facts({"/home/u/l": "/"}), NONE)
    device = HostPath("/dev/x/../fuse", False, "device", "--device")
    assert device.lookup == "/dev/x/../fuse"  # the kernel resolves a device as written


@pytest.mark.parametrize(
    ("opts", "refused"),
    [
        ({"type": "none", "o": "bind", "device": "../../../"}, True),
        ({"type": "overlay", "device": "overlay", "o": "lowerdir=/etc"}, True),
        ({"type": "proc", "device": "proc"}, True),
        ({"type": "cgroup2", "device": "none"}, True),
        ({"type": "none", "o": "bind,ro,rw", "device": "/usr/local"}, True),
        ({"type": "none", "o": "bind,rw,ro", "device": "/usr/local"}, False),
        ({"type": "nfs", "o": "bind", "device": "/"}, True),
    ],
)
def test_local_volumes_as_mount_reads_them(opts: dict[str, str], refused: bool) -> None:
    access = from_volume_create({"Driver": "local", "DriverOpts": opts})
    assert bool(judge(access, {}, NONE)) is refused


def test_borrowed_containers_and_described_ones() -> None:
    host = {"VolumesFrom": ["lender:ro", "other"], "PidMode": "container:pidhost"}
    assert from_container_config({"HostConfig": host}).borrowed == ("lender", "other", "pidhost")
    described = {
        "HostConfig": {"MaskedPaths": ["/proc/kcore"], "VolumesFrom": ["x"]},
        "Mounts": [
            {"Type": "bind", "Source": "/run", "Destination": "/r", "RW": False},
            {"Type": "volume", "Source": "/var/lib/docker/volumes/v/_data"},
        ],
    }
    access = from_container_config(described, described=True)
    assert access.borrowed == ()
    assert [p.path for p in access.paths] == ["/run"]
    assert judge(access.of("container x (borrowed)"), {}, NONE)[0].startswith("container x")


def test_plugin_settings_and_settable_privileges() -> None:
    assert from_plugin_settings(["DEBUG=1", "args=-v"]).refused == ()
    assert from_plugin_settings(["data.source=/"]).refused
    assert from_plugin_settings(["gpu.path=/dev/mem"]).refused
    assert from_plugin_privileges([{"Name": "mount", "Value": [""]}]).refused
    with pytest.raises(HostAccessError):
        from_plugin_settings({"data.source": "/"})


def test_a_nul_in_a_host_path_is_refused() -> None:
    access = from_container_config({"HostConfig": {"Binds": ["/home/u\0/x:/h"]}})
    assert "NUL" in judge(access, {}, NONE)[0]


@pytest.mark.parametrize(
    ("target", "endpoint", "name"),
    [
        ("/containers/parent/alias/exec", Endpoint.EXEC_CREATE, "parent/alias"),
        ("/v1.23/containers/parent/alias/start", Endpoint.CONTAINER_START, "parent/alias"),
        ("/containers/x/restart", Endpoint.CONTAINER_START, "x"),
        ("/plugins/vieux/sshfs:latest/set", Endpoint.PLUGIN_SET, "vieux/sshfs:latest"),
        ("/volumes/create", Endpoint.VOLUME_CREATE, None),
    ],
)
def test_routes_as_dockerd_routes_names_with_slashes(
    target: str, endpoint: Endpoint, name: str | None
) -> None:
    """dockerd routes /containers/{name:.*}/...: a legacy link's name holds a '/'."""
    route = route_request(target)
    assert (route.endpoint, route.name) == (endpoint, name)
