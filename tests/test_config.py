"""The agent's TOML config: good files parse, every mistake names its key, flags override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import config
from agent.config import DEFAULT_ALLOW, NODE, ConfigError, ServerConfig

GOOD = """
[server]
listen = ["127.0.0.1:50051", "unix:agent.sock"]
insecure_unix = true
max_message_bytes = 1048576
max_workers = 32
max_streams = 20
max_streams_per_identity = 5
[server.tls]
cert = "pki/server.pem"
key = "pki/server.key"
ca = "pki/ca.pem"
[server.allow]
"andromede.v1.Node" = ["control-plane"]
[reconcile]
resync_interval_s = 30
[state]
dir = "state"
[log]
mode = "json"
level = "debug"
[ovs]
rundir = "/run/ovs-test"
tunnel_ip = "198.18.0.1"
underlay_mtu = 1600
[qemu]
binary = "/usr/bin/qemu-system-x86_64"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_good_config_parses(tmp_path):
    c = config.load(write(tmp_path, GOOD))
    assert c.server.listen == ("127.0.0.1:50051", f"unix:{tmp_path / 'agent.sock'}")
    assert c.server.insecure_unix is True
    assert c.server.max_message_bytes == 1048576
    assert c.server.tls.cert == tmp_path / "pki/server.pem"
    assert c.server.tls.client_ca == tmp_path / "pki/ca.pem"
    assert (c.server.max_workers, c.server.max_streams, c.server.max_streams_per_identity) == (
        32, 20, 5
    )
    assert c.server.allow[NODE] == ("control-plane",)
    assert c.reconcile.resync_interval_s == 30.0
    assert c.state_dir == tmp_path / "state"
    assert (c.log.mode, c.log.level) == ("json", "debug")
    assert c.ovs.rundir == Path("/run/ovs-test")
    assert c.qemu.binary == "/usr/bin/qemu-system-x86_64"


@pytest.mark.parametrize(
    "change, message",
    [
        (("listen = [", "lisen = ["), "unknown key 'server.lisen'"),
        (('cert = "pki/server.pem"', "cert = 3"), "server.tls.cert: expected a string"),
        (('[state]\n', '[state]\ncolour = "blue"\n'), "unknown key 'state.colour'"),
        (("insecure_unix = true", 'insecure_unix = "yes"'), "server.insecure_unix: expected true"),
        (("max_message_bytes = 1048576", "max_message_bytes = 1.5"),
         "server.max_message_bytes: expected an integer"),
        (("max_message_bytes = 1048576", "max_message_bytes = 10"),
         "server.max_message_bytes: must be"),
        (('mode = "json"', 'mode = "syslog"'), "log.mode: must be one of"),
        (('binary = "/usr/bin/qemu-system-x86_64"', "binary = []"), "qemu.binary: expected"),
        (('rundir = "/run/ovs-test"', "rundir = false"), "ovs.rundir: expected a string"),
        (('"andromede.v1.Node" = ["control-plane"]', '"andromede.v1.Node" = "x"'),
         "server.allow.'andromede.v1.Node': expected a list of strings"),
        (('"andromede.v1.Node"', '"andromede.v1.Nodes"'),
         "unknown key \"server.allow.'andromede.v1.Nodes'\""),
        (("max_workers = 32", "max_workers = 1"), "server.max_workers: must be 2..1024, got 1"),
        (("max_workers = 32", 'max_workers = "32"'), "server.max_workers: expected an integer"),
        (("max_streams = 20", "max_streams = 31"),
         "server.max_streams: must be 1..max_workers-2 (30), so that unary calls always keep 2"),
        (("max_streams = 20", "max_streams = 0"), "server.max_streams: must be 1..max_workers-2"),
        (("max_streams_per_identity = 5", "max_streams_per_identity = 21"),
         "server.max_streams_per_identity: must be 1..max_streams (20), got 21"),
        (("max_streams_per_identity = 5", "max_streams_per_identity = 0"),
         "server.max_streams_per_identity: must be 1..max_streams"),
        (("resync_interval_s = 30", "resync_interval_s = 0.5"),
         "reconcile.resync_interval_s: must be a number of seconds, 1..86400, got 0.5"),
        (("resync_interval_s = 30", "resync_interval_s = 86401"),
         "reconcile.resync_interval_s: must be a number of seconds, 1..86400"),
        (("resync_interval_s = 30", 'resync_interval_s = "1m"'),
         "reconcile.resync_interval_s: expected a number"),
        (("resync_interval_s = 30", "resync_interval_s = nan"),
         "reconcile.resync_interval_s: must be a number of seconds"),
        (("resync_interval_s = 30", "resync = 30"), "unknown key 'reconcile.resync'"),
        (('listen = ["127.0.0.1:50051", "unix:agent.sock"]', 'listen = ["127.0.0.1:1", 5]'),
         "server.listen[1]: expected a non-empty string"),
        (('key = "pki/server.key"\n', ""), "server.tls.key: required"),
        (("[qemu]", "[kvm]"), "unknown key 'kvm'"),
        (('tunnel_ip = "198.18.0.1"', 'tunnel_ip = "198.18.0.300"'),
         "ovs.tunnel_ip: must be an IPv4 or IPv6 address"),
        (("underlay_mtu = 1600", "underlay_mtu = 100"), "ovs.underlay_mtu: must be 1280..9216"),
        (('rundir = "/run/ovs-test"', 'datapath_type = "dpdk"'),
         "ovs.datapath_type: must be one of netdev, system"),
    ],
)
def test_bad_keys_name_the_key_path(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, GOOD.replace(old, new, 1)))
    assert message in str(e.value)


def test_the_ovs_table_sets_up_networking(tmp_path):
    ovs = config.load(write(tmp_path, GOOD)).ovs
    assert (ovs.bridge, ovs.datapath_type, ovs.tunnel_ip, ovs.max_network_mtu) == (
        "br-int", "netdev", "198.18.0.1", 1550
    )
    assert config.OvsConfig().tunnel_ip is None  # networking off by default


def test_plaintext_tcp_is_refused_naming_the_listener(tmp_path):
    text = GOOD.replace('cert = "pki/server.pem"\nkey = "pki/server.key"\nca = "pki/ca.pem"\n', "")
    text = text.replace("[server.tls]\n", "")
    with pytest.raises(ConfigError, match=r"server\.listen\[0\]: plaintext TCP listener"):
        config.load(write(tmp_path, text))


def test_defaults_leave_unary_calls_two_threads_and_resync_every_minute(tmp_path):
    c = config.load(write(tmp_path, "[server]\ninsecure_unix = true\nlisten = ['unix:a.sock']\n"))
    assert (c.server.max_workers, c.server.max_streams, c.server.max_streams_per_identity) == (
        16, 8, 4
    )
    assert c.server.max_streams <= c.server.max_workers - 2
    assert c.reconcile.resync_interval_s == 60.0
    assert dict(c.server.allow) == dict(DEFAULT_ALLOW)


def test_a_partial_allow_table_replaces_only_the_services_it_lists(tmp_path):
    """Allowing one more identity on Node keeps Compute, Network and Metering open to the
    control plane; [] closes a service."""
    c = config.load(write(tmp_path, GOOD.replace(
        '"andromede.v1.Node" = ["control-plane"]',
        '"andromede.v1.Node" = ["auditor"]\n"andromede.v1.Metering" = []',
    )))  # fmt: skip
    assert dict(c.server.allow) == {
        "andromede.v1.Node": ("auditor",),
        "andromede.v1.Compute": ("control-plane",),
        "andromede.v1.Network": ("control-plane",),
        "andromede.v1.Metering": (),
    }
    no_table = config.load(write(tmp_path, GOOD.replace(
        '[server.allow]\n"andromede.v1.Node" = ["control-plane"]\n', ""
    )))  # fmt: skip
    assert dict(no_table.server.allow) == dict(DEFAULT_ALLOW)


def test_server_config_names_the_full_toml_key():
    lab = {"listen": ("unix:/run/x.sock",), "insecure_unix": True}
    with pytest.raises(ConfigError, match=r"^server\.listen\[0\]: 'unix:/run/x\.sock' needs TLS"):
        ServerConfig(listen=("unix:/run/x.sock",))
    with pytest.raises(ConfigError) as e:
        ServerConfig(**lab, allow={"andromede.v1.Nodes": ("x",)})
    assert e.value.key == "server.allow.'andromede.v1.Nodes'"
    assert str(e.value).startswith("server.allow.'andromede.v1.Nodes': unknown service")
    with pytest.raises(ConfigError) as e:
        ServerConfig(**lab, max_workers=4, max_streams=3)
    assert e.value.key == "server.max_streams" and "keep 2 worker threads" in e.value.message


def test_importing_config_does_not_load_grpc():
    """The CLI's and tools' config reading must not pull in the server stack."""
    code = "import sys, agent.config; print('grpc' in sys.modules, 'agent.server' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.stdout.split() == ["False", "False"]


def test_not_toml_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="is not valid TOML"):
        config.load(write(tmp_path, "[server\n"))


def test_flags_override(tmp_path):
    c = config.load(write(tmp_path, GOOD))
    o = config.with_overrides(
        c, state_dir=tmp_path / "other", listen=["unix:/tmp/x.sock"], log_mode="journald"
    )
    assert o.state_dir == tmp_path / "other"
    assert o.server.listen == ("unix:/tmp/x.sock",)
    assert o.server.tls == c.server.tls and o.server.allow == c.server.allow
    assert o.log.mode == "journald" and o.log.level == "debug"
    unchanged = config.with_overrides(c)
    assert unchanged == c
    with pytest.raises(ConfigError, match="--log-mode"):
        config.with_overrides(c, log_mode="loud")
    with pytest.raises(ConfigError, match=r"^--listen: must be 'host:port' or 'unix:/path'") as e:
        config.with_overrides(c, listen=[""])
    assert e.value.key == "--listen"


def test_lab_config_makes_and_reuses_the_lab(tmp_path):
    first = config.lab_config(tmp_path / "lab", port=50123)
    assert first.server.listen == ("127.0.0.1:50123", f"unix:{tmp_path / 'lab' / 'agent.sock'}")
    assert first.server.insecure_unix
    assert first.state_dir == tmp_path / "lab" / "state" and first.state_dir.is_dir()
    for name in ("ca.pem", "server.pem", "server.key", "operator.pem", "control-plane.key"):
        assert (tmp_path / "lab" / "pki" / name).is_file()
    ca = (tmp_path / "lab" / "pki" / "ca.pem").read_bytes()
    again = config.lab_config(tmp_path / "lab")
    assert again == first
    assert (tmp_path / "lab" / "pki" / "ca.pem").read_bytes() == ca
