"""The agent's configuration: one TOML file (plus a few command-line overrides) into frozen
dataclasses, checked key by key.

Where data comes from and where it goes: `load(path)` reads the file (tomllib), `parse(data)`
checks every key and type and builds a `Config`; `with_overrides` applies the daemon's flags
(--state-dir, --listen, --log-mode); agent/main.py hands `Config.server` to agent/server.py,
`Config.state_dir` to the store, `Config.reconcile` to the reconcile engine, `Config.log` to
agent/logs.py and `Config.metrics` to agent/metrics.py. `lab_config(dir)` makes the local lab's
certificates and config file (and reuses them when they exist). This module imports nothing of
gRPC: the CLI, tests and tools can read a config without the server stack.

The file, with every key (paths relative to the file's own directory)::

    [server]
    listen = ["0.0.0.0:50051", "unix:/run/andromede/agent.sock"]   # "host:port" or "unix:/path"
    insecure_unix = false        # plaintext on unix: listeners (identity "unix:local"); lab only
    max_message_bytes = 4194304  # 1024..67108864, both ways
    max_workers = 16             # gRPC worker threads: 2..1024
    max_streams = 8              # open streaming calls, all together (WatchEvents, Health/Watch):
                                 # 1..max_workers-2, so unary calls always keep two threads
    max_streams_per_identity = 4 # open streaming calls of one client identity: 1..max_streams
    [server.tls]                 # mutual TLS: the agent's certificate and key, the clients' CA
    cert = "/etc/andromede/tls/server.pem"
    key = "/etc/andromede/tls/server.key"
    ca = "/etc/andromede/tls/ca.pem"
    [server.allow]               # service -> identities (certificate CN/SAN, or "unix:local");
                                 # a service listed here replaces that service's defaults only,
                                 # the others keep theirs; [] closes a service. The defaults:
    "andromede.v1.Node" = ["control-plane", "operator", "unix:local"]
    "andromede.v1.Compute" = ["control-plane"]
    "andromede.v1.Network" = ["control-plane"]
    "andromede.v1.Metering" = ["control-plane"]
    [reconcile]
    resync_interval_s = 60.0     # seconds between full resyncs (every object re-checked against
                                 # the host, changed or not): 1..86400
    [state]
    dir = "/var/lib/andromede"   # the desired-state database and the agent's lock
    [log]
    mode = "auto"                # "auto" | "json" | "journald"
    level = "info"
    [ovs]                        # this host's Open vSwitch; no tunnel_ip: networking off
    rundir = "/run/openvswitch"  # db.sock and <bridge>.mgmt live here
    bridge = "br-int"
    datapath_type = "netdev"     # "netdev" (userspace, as in the lab) or "system" (kernel)
    tunnel_ip = "198.18.0.1"     # this host's underlay address (peers' TunnelEndpoint.ip)
    underlay_mtu = 1500          # tenant MTUs up to this less 50 (70 over IPv6)
    [qemu]                       # VMs; no images_dir: compute off (Compute not served)
    binary = "qemu-system-x86_64"
    images_dir = "/var/lib/andromede/images"  # kernels, initrds and disk images VMs may use
    run_dir = "/run/andromede/vms"   # QMP and console sockets (must outlive the agent)
    user = "andromede-vm"        # QEMU runs as this user (when the agent is root)
    wire_timeout_s = 60.0        # a started VM waits this long for its ports to be wired: 1..3600
    [metering]                   # per-tenant usage (agent/metering)
    poll_interval_s = 10.0       # seconds between reads of the counters (what an OVS restart
                                 # can lose at most): 1..3600
    [engine]                     # the userspace packet engine (agent/engine): off without ports
    ports = { "eng0" = "port-1" }  # interface -> the port whose traffic it carries; only
                                 # interfaces OVS does not carry (billing would count twice)
    [metrics]                    # Prometheus: GET /metrics (agent/metrics.py)
    listen = "127.0.0.1:9464"    # "ip:port" ("[::1]:9464", "localhost:9464"; port 0: a free
                                 # one, logged); "" turns it off. Without tls, loopback only
    tls = false                  # true: HTTPS with [server.tls]'s certificate and key, and a
                                 # client certificate signed by its ca required (mutual TLS)

Errors: any unknown key, wrong type or bad value raises `ConfigError` (the only config error
type; the server raises it too, for TLS files it cannot use and addresses it cannot bind) whose
message starts with the key's full path (`server.tls.cert: expected a string`,
`server.allow.'andromede.v1.Node': expected a list of strings`, `unknown key 'server.lisen'`);
an error in a command-line flag names the flag (`--listen: ...`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent import pki
from agent.logs import MODES
from dataplane.topology import ID

DEFAULT_STATE_DIR = Path("/var/lib/andromede")
DEFAULT_LISTEN = ("0.0.0.0:50051", "unix:/run/andromede/agent.sock")
LAB_PORT = 50051
DEFAULT_OVS_RUNDIR = Path("/run/openvswitch")
DEFAULT_QEMU = "qemu-system-x86_64"
DEFAULT_VM_RUN_DIR = Path("/run/andromede/vms")
LAB_CONFIG = "agent.toml"
LEVELS = ("debug", "info", "warning", "error", "critical")

NODE = "andromede.v1.Node"
COMPUTE = "andromede.v1.Compute"
NETWORK = "andromede.v1.Network"
METERING = "andromede.v1.Metering"
API_SERVICES = (NODE, COMPUTE, NETWORK, METERING)

LOCAL = "unix:local"
"""The identity of a call on a plaintext unix socket (never a certificate's name)."""

DEFAULT_ALLOW: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        NODE: ("control-plane", "operator", LOCAL),
        COMPUTE: ("control-plane",),
        NETWORK: ("control-plane",),
        METERING: ("control-plane",),
    }
)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_WORKERS = 16
MAX_STREAMS = 8
MAX_STREAMS_PER_IDENTITY = 4
# A stream holds a worker thread for as long as it lasts; these are never given to streams.
UNARY_RESERVE = 2
RESYNC_INTERVAL_S = 60.0
MAX_RESYNC_INTERVAL_S = 86_400.0
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"  # 9464: Prometheus's registered port for exporters

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """A bad setting; `key` is its full path in the TOML file (or the flag's name), `message`
    what is wrong with it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def toml_key(*parts: str) -> str:
    """A dotted TOML key path, quoting the parts that are not bare keys
    (`server.allow.'andromede.v1.Node'`)."""
    return ".".join(
        p if _BARE_KEY.fullmatch(p) else (f"'{p}'" if "'" not in p else json.dumps(p))
        for p in parts
    )


# --- the server ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the agent's certificate and key, and the CA that signs client certificates
    (`[server.tls]` cert, key, ca)."""

    cert: Path
    key: Path
    client_ca: Path


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How the server listens, whom it lets in and how much it serves at once (`[server]`).
    Checked on construction; errors name the TOML key."""

    # "host:port" (TCP, always mutual TLS; port 0 picks a free one) or "unix:/path".
    listen: tuple[str, ...]
    tls: TlsFiles | None = None
    # Serve unix: listeners in plaintext (identity LOCAL). For the local lab only.
    insecure_unix: bool = False
    # Service name -> identities that may call it; a service without an entry is closed.
    allow: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_ALLOW)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_workers: int = MAX_WORKERS
    # Open streaming calls, all together and per client identity.
    max_streams: int = MAX_STREAMS
    max_streams_per_identity: int = MAX_STREAMS_PER_IDENTITY

    def __post_init__(self) -> None:
        if isinstance(self.listen, str) or not self.listen:
            raise ConfigError("server.listen", "must be a non-empty list of addresses")
        for i, address in enumerate(self.listen):
            where = f"server.listen[{i}]"
            if not isinstance(address, str) or not address:
                raise ConfigError(where, f"must be 'host:port' or 'unix:/path', got {address!r}")
            if address.startswith("unix:"):
                if not address.startswith("unix:/"):
                    raise ConfigError(
                        where, f"a unix socket needs an absolute path, got {address!r}"
                    )
                if not self.insecure_unix and self.tls is None:
                    raise ConfigError(
                        where,
                        f"{address!r} needs TLS files ([server.tls] cert, key, ca) or, for the "
                        f"local lab only, server.insecure_unix = true",
                    )
            elif self.tls is None:
                raise ConfigError(
                    where,
                    f"plaintext TCP listener {address!r} refused: TCP listeners always use "
                    f"mutual TLS, so set [server.tls] cert, key and ca; plaintext is allowed "
                    f"only on a unix: socket with server.insecure_unix = true",
                )
        for name, identities in self.allow.items():
            where = toml_key("server", "allow", name)
            if name not in API_SERVICES:
                raise ConfigError(
                    where,
                    f"unknown service; the services are {', '.join(API_SERVICES)} (health and "
                    f"reflection are open to every authenticated client)",
                )
            if isinstance(identities, str) or not all(
                isinstance(i, str) and i for i in identities
            ):
                raise ConfigError(where, "must be a list of non-empty identities")
        if not 1024 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise ConfigError(
                "server.max_message_bytes",
                f"must be 1024..67108864, got {self.max_message_bytes}",
            )
        if not UNARY_RESERVE <= self.max_workers <= 1024:
            raise ConfigError(
                "server.max_workers", f"must be {UNARY_RESERVE}..1024, got {self.max_workers}"
            )
        streams = self.max_workers - UNARY_RESERVE
        if not 1 <= self.max_streams <= streams:
            raise ConfigError(
                "server.max_streams",
                f"must be 1..max_workers-{UNARY_RESERVE} ({streams}), so that unary calls always "
                f"keep {UNARY_RESERVE} worker threads however many streams are open; raise "
                f"max_workers for more, got {self.max_streams}",
            )
        if not 1 <= self.max_streams_per_identity <= self.max_streams:
            raise ConfigError(
                "server.max_streams_per_identity",
                f"must be 1..max_streams ({self.max_streams}), got "
                f"{self.max_streams_per_identity}",
            )


# --- the rest --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    """The reconcile engine's timing (`[reconcile]`)."""

    # Seconds between full resyncs: every object re-applied, changed or not.
    resync_interval_s: float = RESYNC_INTERVAL_S

    def __post_init__(self) -> None:
        value = self.resync_interval_s
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 1 <= value <= MAX_RESYNC_INTERVAL_S
        ):
            raise ConfigError(
                "reconcile.resync_interval_s",
                f"must be a number of seconds, 1..{MAX_RESYNC_INTERVAL_S:.0f}, got {value!r}",
            )


@dataclass(frozen=True, slots=True)
class LogConfig:
    mode: str = "auto"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class OvsConfig:
    """This host's Open vSwitch and what the agent makes of it (`[ovs]`). With `tunnel_ip`
    unset the agent does not touch OVS and the Network service answers UNIMPLEMENTED."""

    rundir: Path = DEFAULT_OVS_RUNDIR  # where db.sock and the bridges' .mgmt sockets are
    bridge: str = "br-int"
    # "netdev": OVS's userspace datapath (no kernel module, as in the lab); "system": the
    # kernel's.
    datapath_type: str = "netdev"
    # This host's underlay address: peers' TunnelEndpoint.ip for this host, and the VXLAN
    # port's local_ip. None: networking off.
    tunnel_ip: str | None = None
    underlay_mtu: int = 1500

    def __post_init__(self) -> None:
        if self.datapath_type not in ("netdev", "system"):
            raise ConfigError("ovs.datapath_type",
                              f"must be netdev or system, got {self.datapath_type!r}")  # fmt: skip
        if not 1 <= len(self.bridge) <= 15 or "/" in self.bridge:
            raise ConfigError("ovs.bridge", f"must be an interface name, got {self.bridge!r}")
        if self.tunnel_ip is not None:
            try:
                ipaddress.ip_address(self.tunnel_ip)
            except ValueError:
                raise ConfigError("ovs.tunnel_ip", f"must be an IPv4 or IPv6 address, got "
                                  f"{self.tunnel_ip!r}") from None  # fmt: skip
        if not 1280 <= self.underlay_mtu <= 9216:
            raise ConfigError("ovs.underlay_mtu", f"must be 1280..9216, got {self.underlay_mtu}")

    @property
    def max_network_mtu(self) -> int:
        """The largest tenant MTU the underlay carries: less VXLAN's 50 bytes (70 over IPv6)."""
        overhead = 70 if self.tunnel_ip and ":" in self.tunnel_ip else 50
        return self.underlay_mtu - overhead


@dataclass(frozen=True, slots=True)
class QemuConfig:
    """The compute side: the QEMU binary, the image directory VMs take files from (None:
    compute is off), where the VMs' sockets go, the user QEMU runs as, and how long a started
    VM waits for its ports to be wired before it is FAILED."""

    binary: str = DEFAULT_QEMU
    images_dir: Path | None = None
    run_dir: Path = DEFAULT_VM_RUN_DIR
    user: str = "andromede-vm"
    wire_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.wire_timeout_s <= 3600:
            raise ConfigError("qemu.wire_timeout_s", f"must be 1..3600, got {self.wire_timeout_s}")
        if not self.user or ":" in self.user or "/" in self.user:
            raise ConfigError("qemu.user", f"must be a user name, got {self.user!r}")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint (`[metrics]`): where it listens ("" = off) and whether it is
    HTTPS with mutual TLS. Plain HTTP is refused on any address but loopback: the metrics
    name tenants and show their traffic."""

    listen: str = DEFAULT_METRICS_LISTEN
    tls: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.listen, str):
            raise ConfigError("metrics.listen", f"expected a string, got {self.listen!r}")
        if not isinstance(self.tls, bool):
            raise ConfigError("metrics.tls", f"expected true or false, got {self.tls!r}")
        if self.listen == "":
            return
        host, _ = self.address  # checks the form
        if not self.tls and not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(
                "metrics.listen",
                f"{self.listen!r} is not a loopback address, and without TLS the metrics "
                f"(tenants' traffic included) would be open to the network: set metrics.tls = "
                f"true (HTTPS with [server.tls]'s certificate, client certificates required), "
                f"or listen on 127.0.0.1 or [::1] and scrape through a local proxy",
            )

    @property
    def address(self) -> tuple[str, int]:
        """(IP, port) to bind; "localhost" is 127.0.0.1. Raises ConfigError naming
        metrics.listen if `listen` is not "ip:port" or "[ipv6]:port"."""
        form = "'ip:port' (127.0.0.1:9464, [::1]:9464, localhost:9464) or \"\" to turn it off"
        host, sep, port = self.listen.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            raise ConfigError("metrics.listen", f"must be {form}, got {self.listen!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if ":" not in host:
                raise ConfigError("metrics.listen", f"must be {form}, got {self.listen!r}")
        elif ":" in host:
            raise ConfigError(
                "metrics.listen", f"an IPv6 address goes in brackets ([::1]:9464), got "
                f"{self.listen!r}",
            )
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                "metrics.listen", f"must be {form} (an IP address, not a host name), got "
                f"{self.listen!r}",
            ) from None
        return host, int(port)


@dataclass(frozen=True, slots=True)
class MeteringConfig:
    """How often the usage ledger reads its sources (`[metering]`)."""

    poll_interval_s: float = 10.0

    def __post_init__(self) -> None:
        value = self.poll_interval_s
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 3600:
            raise ConfigError("metering.poll_interval_s",
                              f"must be a number of seconds, 1..3600, got {value!r}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The interfaces the packet engine meters (`[engine] ports`): name -> port id."""

    ports: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for interface, port_id in self.ports.items():
            if not isinstance(interface, str) or not re.fullmatch(r"[^/:\s]{1,15}", interface):
                raise ConfigError(f"engine.ports.{interface}", "must be a Linux interface name: 1-15 "
                                  "characters, none of them '/', ':' or whitespace")  # fmt: skip
            if not isinstance(port_id, str) or not ID.fullmatch(port_id):
                raise ConfigError(f"engine.ports.{interface}", f"expected a port id, got {port_id!r}")
        object.__setattr__(self, "ports", MappingProxyType(dict(self.ports)))


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    state_dir: Path = DEFAULT_STATE_DIR
    log: LogConfig = field(default_factory=LogConfig)
    ovs: OvsConfig = field(default_factory=OvsConfig)
    qemu: QemuConfig = field(default_factory=QemuConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    source: Path | None = None  # the file it came from, for messages
    metering: MeteringConfig = field(default_factory=MeteringConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


# --- reading ---------------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Config:
    """The config in the TOML file `path`; relative paths in it are relative to its directory."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read the config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path} is not valid TOML: {e}") from None
    return parse(data, base=path.resolve().parent, source=path)


def parse(data: Mapping[str, Any], base: Path | None = None, source: Path | None = None) -> Config:
    """Check the parsed TOML `data` key by key and build the Config."""
    base = base or Path.cwd()
    top = _Table(data, "")
    top.only("server", "reconcile", "state", "log", "ovs", "qemu", "metrics", "metering", "engine")

    srv = top.table("server")
    srv.only(
        "listen", "insecure_unix", "tls", "allow", "max_message_bytes", "max_workers",
        "max_streams", "max_streams_per_identity",
    )  # fmt: skip
    listen = srv.strings("listen", DEFAULT_LISTEN)
    tls = None
    if "tls" in srv.data:
        t = srv.table("tls")
        t.only("cert", "key", "ca")
        tls = TlsFiles(
            cert=t.path("cert", base, required=True),
            key=t.path("key", base, required=True),
            client_ca=t.path("ca", base, required=True),
        )
    a = srv.table("allow")
    a.only(*API_SERVICES)
    # A listed service replaces its own defaults only: allowing a new identity on Node must
    # not silently close Compute, Network and Metering to the control plane.
    allow = {**DEFAULT_ALLOW, **{name: a.strings(name, ()) for name in a.data}}
    server_config = ServerConfig(
        listen=tuple(_absolute_unix(address, base) for address in listen),
        tls=tls,
        insecure_unix=srv.bool("insecure_unix", False),
        allow=MappingProxyType(allow),
        max_message_bytes=srv.int("max_message_bytes", MAX_MESSAGE_BYTES),
        max_workers=srv.int("max_workers", MAX_WORKERS),
        max_streams=srv.int("max_streams", MAX_STREAMS),
        max_streams_per_identity=srv.int("max_streams_per_identity", MAX_STREAMS_PER_IDENTITY),
    )

    rc = top.table("reconcile")
    rc.only("resync_interval_s")
    reconcile = ReconcileConfig(
        resync_interval_s=rc.number("resync_interval_s", RESYNC_INTERVAL_S)
    )

    state = top.table("state")
    state.only("dir")
    state_dir = state.path("dir", base) or DEFAULT_STATE_DIR

    lg = top.table("log")
    lg.only("mode", "level")
    log = LogConfig(mode=lg.choice("mode", MODES, "auto"), level=lg.choice("level", LEVELS, "info"))

    ov = top.table("ovs")
    ov.only("rundir", "bridge", "datapath_type", "tunnel_ip", "underlay_mtu")
    ovs = OvsConfig(
        rundir=ov.path("rundir", base) or DEFAULT_OVS_RUNDIR,
        bridge=ov.string("bridge", "br-int"),
        datapath_type=ov.choice("datapath_type", ("netdev", "system"), "netdev"),
        tunnel_ip=ov.string("tunnel_ip", "") if "tunnel_ip" in ov.data else None,
        underlay_mtu=ov.int("underlay_mtu", 1500),
    )

    qm = top.table("qemu")
    qm.only("binary", "images_dir", "run_dir", "user", "wire_timeout_s")
    qemu = QemuConfig(
        binary=qm.string("binary", DEFAULT_QEMU),
        images_dir=qm.path("images_dir", base),
        run_dir=qm.path("run_dir", base) or DEFAULT_VM_RUN_DIR,
        user=qm.string("user", "andromede-vm"),
        wire_timeout_s=qm.number("wire_timeout_s", 60.0),
    )

    me = top.table("metering")
    me.only("poll_interval_s")
    metering = MeteringConfig(poll_interval_s=me.number("poll_interval_s", 10.0))

    mt = top.table("metrics")
    mt.only("listen", "tls")
    metrics = MetricsConfig(listen=mt.data.get("listen", DEFAULT_METRICS_LISTEN),
                            tls=mt.data.get("tls", False))  # fmt: skip
    if metrics.tls and metrics.listen and tls is None:
        raise ConfigError("metrics.tls", "true needs the server's TLS files: set [server.tls] "
                          "cert, key and ca (the endpoint uses the same ones)")  # fmt: skip

    en = top.table("engine")
    en.only("ports")
    ports = en.data.get("ports", {})
    if not isinstance(ports, Mapping):
        raise ConfigError("engine.ports", f"expected a table of interface = port id, got {ports!r}")
    engine = EngineConfig(ports=ports)

    return Config(server_config, state_dir, log, ovs, qemu, reconcile, source, metrics=metrics,
                  metering=metering, engine=engine)


def with_overrides(
    config: Config,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    listen: Sequence[str] | None = None,
    log_mode: str | None = None,
) -> Config:
    """`config` with the daemon's command-line flags applied (None: keep the file's value)."""
    if state_dir is not None:
        config = dataclasses.replace(config, state_dir=Path(state_dir).resolve())
    if listen:
        addresses = tuple(_absolute_unix(a, Path.cwd()) for a in listen)
        try:
            server_config = dataclasses.replace(config.server, listen=addresses)
        except ConfigError as e:
            # Only the addresses changed, so they are at fault: name the flag, not the file's key.
            raise ConfigError("--listen", e.message) from None
        config = dataclasses.replace(config, server=server_config)
    if log_mode is not None:
        if log_mode not in MODES:
            raise ConfigError("--log-mode", f"must be one of {', '.join(MODES)}, got {log_mode!r}")
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, mode=log_mode))
    return config


# --- the lab ---------------------------------------------------------------------------------


def lab_config(directory: str | os.PathLike[str], port: int = LAB_PORT) -> Config:
    """The local lab in `directory`: certificates in pki/ (server for localhost; clients
    "control-plane" and "operator"), state in state/, a config file agent.toml that listens on
    127.0.0.1:`port` with mutual TLS and on the plaintext unix socket agent.sock. Files that
    exist are reused (so is agent.toml, and with it the port it names)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    certs = pki.lab_pki(directory / "pki", hostnames=["localhost"], ips=["127.0.0.1"])
    (directory / "state").mkdir(exist_ok=True, mode=0o700)
    path = directory / LAB_CONFIG
    if not path.exists():
        q = json.dumps  # a TOML basic string is a JSON string for these paths
        text = (
            "# The local lab's agent (made by andromede-agent --lab; edit freely).\n"
            "[server]\n"
            f"listen = [{q(f'127.0.0.1:{port}')}, {q('unix:' + str(directory / 'agent.sock'))}]\n"
            "insecure_unix = true\n"
            "[server.tls]\n"
            f"cert = {q(str(certs.server.cert))}\n"
            f"key = {q(str(certs.server.key))}\n"
            f"ca = {q(str(certs.ca.cert))}\n"
            "[state]\n"
            f"dir = {q(str(directory / 'state'))}\n"
            "[metrics]\n"
            'listen = "127.0.0.1:0"  # a free port, printed at start: labs side by side\n'
            "[log]\n"
            'mode = "auto"\n'
            'level = "info"\n'
        )
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return load(path)


def lab_unix_socket(config: Config) -> str | None:
    """The path of the config's first unix listener (None if it has none)."""
    for address in config.server.listen:
        if address.startswith("unix:"):
            return address[len("unix:"):]
    return None


def lab_tcp_target(config: Config) -> str | None:
    """The config's first TCP listener as a client would dial it (0.0.0.0 -> 127.0.0.1)."""
    for address in config.server.listen:
        if not address.startswith("unix:"):
            host, _, port = address.rpartition(":")
            if host in ("0.0.0.0", "[::]", "::", ""):
                host = "127.0.0.1"
            return f"{host}:{port}"
    return None


# --- inside ----------------------------------------------------------------------------------


def _absolute_unix(address: str, base: Path) -> str:
    if isinstance(address, str) and address.startswith("unix:") and address[5:6] != "/":
        return "unix:" + str(base / address[len("unix:"):])
    return address


class _Table:
    """One TOML table and its dotted path, with typed getters that name the key on error."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, "expected a table")
        self.data = data
        self.where = path

    def key(self, name: str) -> str:
        return f"{self.where}.{toml_key(name)}" if self.where else toml_key(name)

    def only(self, *names: str) -> None:
        for name in self.data:
            if name not in names:
                raise ConfigError(
                    "", f"unknown key {self.key(name)!r}; the keys here are {', '.join(names)}"
                )

    def table(self, name: str) -> _Table:
        return _Table(self.data.get(name, {}), self.key(name))

    def string(self, name: str, default: str) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), f"expected a non-empty string, got {value!r}")
        return value

    def path(self, name: str, base: Path, *, required: bool = False) -> Path | None:
        if name not in self.data:
            if required:
                raise ConfigError(self.key(name), "required")
            return None
        value = self.data[name]
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), f"expected a string (a path), got {value!r}")
        return base / value

    def bool(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {value!r}")
        return value

    def int(self, name: str, default: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"expected an integer, got {value!r}")
        return value

    def number(self, name: str, default: float) -> float:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.key(name), f"expected a number, got {value!r}")
        return float(value)

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.get(name, default)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(self.key(name), f"expected a list of strings, got {value!r}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(
                    f"{self.key(name)}[{i}]", f"expected a non-empty string, got {item!r}"
                )
        return tuple(value)

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}, got {value!r}")
        return value
