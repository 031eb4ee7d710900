"""The agent's configuration: one TOML file (plus a few command-line overrides) into frozen
dataclasses, checked key by key.

Where data comes from and where it goes: `load(path)` reads the file (tomllib), `parse(data)`
checks every key and type and builds a `Config`; `with_overrides` applies the daemon's flags
(--state-dir, --listen, --log-mode); agent/main.py hands `Config.server` to agent/server.py,
`Config.state_dir` to the store and `Config.log` to agent/logs.py. `lab_config(dir)` makes the
local lab's certificates and config file (and reuses them when they exist).

The file, with every key (paths relative to the file's own directory)::

    [server]
    listen = ["0.0.0.0:50051", "unix:/run/andromede/agent.sock"]   # "host:port" or "unix:/path"
    insecure_unix = false        # plaintext on unix: listeners (identity "unix:local"); lab only
    max_message_bytes = 4194304
    [server.tls]                 # mutual TLS: the agent's certificate and key, the clients' CA
    cert = "/etc/andromede/tls/server.pem"
    key = "/etc/andromede/tls/server.key"
    ca = "/etc/andromede/tls/ca.pem"
    [server.allow]               # service -> identities (certificate CN/SAN, or "unix:local")
    "andromede.v1.Node" = ["control-plane", "operator"]
    [state]
    dir = "/var/lib/andromede"   # the desired-state database and the agent's lock
    [log]
    mode = "auto"                # "auto" | "json" | "journald"
    level = "info"
    [ovs]                        # reserved for the network issue
    rundir = "/run/openvswitch"
    [qemu]                       # reserved for the compute issue
    binary = "qemu-system-x86_64"

Errors: any unknown key, wrong type or bad value raises `ConfigError` whose message starts with
the key's full path (`server.tls.cert: expected a string`, `unknown key 'server.lisen'`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import pki, server
from agent.logs import MODES
from agent.server import ServerConfig, TlsFiles

DEFAULT_STATE_DIR = Path("/var/lib/andromede")
DEFAULT_LISTEN = ("0.0.0.0:50051", "unix:/run/andromede/agent.sock")
LAB_PORT = 50051
DEFAULT_OVS_RUNDIR = Path("/run/openvswitch")
DEFAULT_QEMU = "qemu-system-x86_64"
LAB_CONFIG = "agent.toml"
LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A bad setting; `key` is its full path in the TOML file (or the flag's name)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


@dataclass(frozen=True, slots=True)
class LogConfig:
    mode: str = "auto"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class OvsConfig:
    """Reserved for the network issue: where ovsdb-server's and ovs-vswitchd's sockets are."""

    rundir: Path = DEFAULT_OVS_RUNDIR


@dataclass(frozen=True, slots=True)
class QemuConfig:
    """Reserved for the compute issue: the QEMU binary to run guests with."""

    binary: str = DEFAULT_QEMU


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    state_dir: Path = DEFAULT_STATE_DIR
    log: LogConfig = field(default_factory=LogConfig)
    ovs: OvsConfig = field(default_factory=OvsConfig)
    qemu: QemuConfig = field(default_factory=QemuConfig)
    source: Path | None = None  # the file it came from, for messages


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
    top.only("server", "state", "log", "ovs", "qemu")

    srv = top.table("server")
    srv.only("listen", "insecure_unix", "tls", "allow", "max_message_bytes")
    listen = srv.strings("listen", DEFAULT_LISTEN)
    listen = tuple(_absolute_unix(a, base) for a in listen)
    insecure_unix = srv.bool("insecure_unix", False)
    max_bytes = srv.int("max_message_bytes", server.MAX_MESSAGE_BYTES)
    tls = None
    if "tls" in srv.data:
        t = srv.table("tls")
        t.only("cert", "key", "ca")
        tls = TlsFiles(
            cert=t.path("cert", base, required=True),
            key=t.path("key", base, required=True),
            client_ca=t.path("ca", base, required=True),
        )
    allow: Mapping[str, tuple[str, ...]] = server.DEFAULT_ALLOW
    if "allow" in srv.data:
        a = srv.table("allow")
        a.only(*server.API_SERVICES)
        allow = {name: a.strings(name, ()) for name in a.data}
    server_config = _server_config(
        "server",
        listen=listen,
        tls=tls,
        insecure_unix=insecure_unix,
        allow=allow,
        max_message_bytes=max_bytes,
    )

    state = top.table("state")
    state.only("dir")
    state_dir = state.path("dir", base) or DEFAULT_STATE_DIR

    lg = top.table("log")
    lg.only("mode", "level")
    log = LogConfig(mode=lg.choice("mode", MODES, "auto"), level=lg.choice("level", LEVELS, "info"))

    ov = top.table("ovs")
    ov.only("rundir")
    ovs = OvsConfig(rundir=ov.path("rundir", base) or DEFAULT_OVS_RUNDIR)

    qm = top.table("qemu")
    qm.only("binary")
    qemu = QemuConfig(binary=qm.string("binary", DEFAULT_QEMU))

    return Config(server_config, state_dir, log, ovs, qemu, source)


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
        server_config = _server_config(
            "--listen", **{**_fields(config.server), "listen": addresses}
        )
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


def _server_config(prefix: str, **kwargs: Any) -> ServerConfig:
    try:
        return ServerConfig(**kwargs)
    except server.ConfigError as e:
        key = e.field.replace("tls.client_ca", "tls.ca")
        message = str(e)[len(e.field) + 2:]
        raise ConfigError(f"{prefix}.{key}" if prefix == "server" else prefix, message) from None


def _fields(config: ServerConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


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
        return f"{self.where}.{name}" if self.where else name

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
