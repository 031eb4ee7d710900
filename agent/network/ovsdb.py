"""Open vSwitch's database through the python-ovs IDL: the bridges and ports the network
reconciler needs, and nothing more.

Where data comes from and goes: one long-lived IDL connection to ovsdb-server (`remote`, for
instance `unix:/var/run/openvswitch/db.sock`) keeps an in-memory replica of the tables
Open_vSwitch, Bridge, Port and Interface (only the columns used here). Reads answer from the
replica once it is in sync; writes are IDL transactions built from the replica (set members
are added and removed with mutations, so concurrent writers do not undo each other), sent to
the server, and rebuilt from a fresh replica and retried when the answer is TRY_AGAIN (the
connection dropped under the transaction) or a refusal because another writer got there
first (a duplicate bridge name, a row already deleted). ovs-vswitchd reads the same database
and makes the bridges and ports real; `wait=True` on a write that changed something waits
until it has (`next_cfg`/`cur_cfg`, as `ovs-vsctl` does), which is what assigns ofports and
creates a bridge's OpenFlow socket.

The schema comes from the server itself (`get_schema`), so the client always speaks the
server's version.

Connection loss: the IDL reconnects by itself (backoff 0.1-1 s here, not python-ovs's 1-8 s),
and a fresh connection downloads the whole replica again (a full resync: nothing is kept from
before). Every call first runs the IDL and waits, up to its timeout, for a live connection with
a replica in sync, so it answers from what the server last said, never from a replica it
knows to be stale; `resyncs` counts the reconnections so a caller can do a full pass after
one. Every call has a timeout and raises ApplyError (UNAVAILABLE: the server
is down or slow; FAILED_PRECONDITION: the bridge is missing) with what to check.

Threads: calls are serialised by a lock (the IDL is not thread-safe); no thread of its own.
Names: the bridge name and datapath type are parameters (the agent's config carries them:
`netdev` for the userspace datapath, `system` where the kernel module exists).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
import ovs.db.idl
import ovs.poller
import structlog

from agent.reconcile import ApplyError

log = structlog.get_logger(__name__)

IFACE_ID = "iface-id"  # external_ids key that names the port bound to an interface (OVS/OVN)
# external_ids:plugged-by on what the agent plugs itself: it takes out only those, never an
# interface the compute side (os-vif) plugged before the port reached the agent.
PLUGGED_BY = "plugged-by"
AGENT = "andromede-agent"
COMPUTE = "andromede-compute"  # a VM's tap, plugged by the agent's compute side
VXLAN_PORT = "vxlan0"
VXLAN_OFPORT = 4789  # the fixed ofport of the one flow-based VXLAN port, for the compiler
DEFAULT_TIMEOUT_S = 5.0
BACKOFF_MS = (100, 1000)  # reconnect backoff, min and max
_RETRIES_ON_ERROR = 3  # a uniqueness conflict (two writers made the same row): retry this often

_COLUMNS = {
    "Open_vSwitch": ["bridges", "next_cfg", "cur_cfg"],
    "Bridge": ["name", "ports", "datapath_type", "fail_mode", "other_config", "external_ids"],
    "Port": ["name", "interfaces", "external_ids"],
    "Interface": ["name", "type", "options", "external_ids", "ofport", "ofport_request",
                  "link_state", "admin_state", "error"],
}  # fmt: skip
Txn = ovs.db.idl.Transaction


@dataclass(frozen=True, slots=True)
class Interface:
    """One interface on a bridge, as ovs-vswitchd reports it in the database."""

    name: str
    port_id: str  # external_ids:iface-id ("" when unset)
    ofport: int | None  # None until ovs-vswitchd assigned one; -1 if it failed to open it
    link_state: str  # "up", "down" or "" (not known yet)
    type: str  # "" (a system or tap device), "internal", "vxlan", ...
    error: str  # why ovs-vswitchd could not open it ("" when fine)
    plugged_by: str = ""  # external_ids:plugged-by (AGENT: the agent plugged it)


class Ovsdb:
    """A long-lived IDL connection to one ovsdb-server. `connect()` first (or let the first
    call connect), `close()` at the end."""

    def __init__(self, remote: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.remote = remote
        self.timeout = timeout
        self.resyncs = 0  # reconnections since the first connection (each one a full resync)
        self._lock = threading.RLock()
        self._idl: ovs.db.idl.Idl | None = None
        self._session_seqno: int | None = None  # of the connection the replica came from
        self._down = False  # a drop was seen and logged, no reconnection yet
        self._notes: list[tuple[str, str, dict]] = []  # what the transaction being built will do
        self._cfg_due = 0  # the next_cfg that `settle()` waits for (0: none)
        self._log = log.bind(remote=remote)

    # --- connection --------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> None:
        """Fetch the schema, open the IDL and wait for the first full replica."""
        with self._lock:
            deadline = self._deadline(timeout)
            if self._idl is None:
                started = time.perf_counter()
                helper = ovs.db.idl.SchemaHelper(schema_json=_get_schema(self.remote, deadline))
                for table, columns in _COLUMNS.items():
                    helper.register_columns(table, columns)
                self._idl = ovs.db.idl.Idl(self.remote, helper)
                # python-ovs clamps set_backoff() to at least 1 s; its FSM reads the attribute.
                fsm = self._idl._session.reconnect
                fsm.set_backoff(*BACKOFF_MS)
                fsm.min_backoff = BACKOFF_MS[0]
                self._sync(deadline)
                self._log.info("ovs.connected", ms=round((time.perf_counter() - started) * 1000, 1))
            else:
                self._sync(deadline)

    def close(self) -> None:
        with self._lock:
            if self._idl is not None:
                self._idl.close()
                self._idl = None
                self._session_seqno = None

    def __enter__(self) -> Ovsdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True if the last look found the connection up and the replica in sync."""
        idl = self._idl
        return idl is not None and idl._session.is_connected() and (
            idl.state == idl.IDL_S_MONITORING
        )

    # --- reads -------------------------------------------------------------------------

    def bridges(self, timeout: float | None = None) -> list[str]:
        """The names of all bridges."""
        with self._lock:
            self._ready(self._deadline(timeout))
            return sorted(b.name for b in self._rows("Bridge"))

    def interfaces(self, bridge: str, timeout: float | None = None) -> list[Interface]:
        """Every interface on `bridge` (its own internal one included), sorted by name; []
        when the bridge does not exist."""
        with self._lock:
            self._ready(self._deadline(timeout))
            br = self._find("Bridge", bridge)
            if br is None:
                return []
            found = [_interface(i) for p in br.ports for i in p.interfaces]
            return sorted(found, key=lambda i: i.name)

    # --- writes ------------------------------------------------------------------------

    def ensure_bridge(
        self,
        name: str,
        *,
        datapath_type: str = "netdev",
        fail_mode: str = "secure",
        other_config: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> bool:
        """Make bridge `name` exist with this datapath type and fail mode (`secure`: after an
        ovs-vswitchd restart it forwards nothing until flows are back, rather than bridging
        tenants) and these other_config keys (default disable-in-band=true). True if anything
        changed. `wait`: until ovs-vswitchd has made it (its OpenFlow socket exists)."""
        config = {"disable-in-band": "true"} if other_config is None else dict(other_config)

        def mutate(txn: Txn) -> bool:
            br = self._find("Bridge", name)
            if br is None:
                iface = txn.insert(self._table("Interface"))
                iface.name, iface.type = name, "internal"
                port = txn.insert(self._table("Port"))
                port.name, port.interfaces = name, [iface]
                br = txn.insert(self._table("Bridge"))
                br.name, br.ports = name, [port]
                br.datapath_type, br.fail_mode, br.other_config = datapath_type, fail_mode, config
                self._root(txn).addvalue("bridges", br)
                self._note("ovs.bridge_created", bridge=name, datapath_type=datapath_type)
                return True
            changed = False
            if br.datapath_type != datapath_type:
                br.datapath_type, changed = datapath_type, True
            if list(br.fail_mode) != [fail_mode]:
                # Changing fail_mode makes ovs-vswitchd flush the bridge's flows.
                self._note("ovs.fail_mode_changed", "warning", bridge=name,
                           old=list(br.fail_mode), new=fail_mode)  # fmt: skip
                br.fail_mode, changed = fail_mode, True
            for key, value in config.items():
                if br.other_config.get(key) != value:
                    br.setkey("other_config", key, value)
                    changed = True
            return changed

        return self._transact(f"ensure bridge {name}", mutate, wait, timeout)

    def ensure_vxlan_port(
        self,
        bridge: str,
        local_ip: str,
        *,
        name: str = VXLAN_PORT,
        ofport: int = VXLAN_OFPORT,
        dst_port: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> bool:
        """The one flow-based VXLAN port on `bridge` (key=flow, remote_ip=flow: the flows set
        tun_id and tun_dst), sourced from `local_ip`, at a fixed ofport. True if changed."""
        options = {"key": "flow", "remote_ip": "flow", "local_ip": local_ip}
        if dst_port is not None:
            options["dst_port"] = str(dst_port)

        def mutate(txn: Txn) -> bool:
            return self._ensure_port(txn, _Names(self._idl), bridge, name, "vxlan", options, {}, ofport)

        return self._transact(f"ensure vxlan port {name} on {bridge}", mutate, wait, timeout)

    def add_port(
        self,
        bridge: str,
        name: str,
        port_id: str,
        *,
        ofport: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> bool:
        """Put the existing device `name` (a tap or veth) on `bridge` with
        external_ids:iface-id=`port_id` (and ofport_request=`ofport` if given), moving it from
        another bridge if need be. True if changed."""
        return self.add_ports(bridge, {name: port_id}, ofports={name: ofport} if ofport else None,
                              wait=wait, timeout=timeout)  # fmt: skip

    def add_ports(
        self,
        bridge: str,
        ports: Mapping[str, str],
        *,
        ofports: Mapping[str, int] | None = None,
        plugged_by: str = "",
        wait: bool = False,
        settle_later: bool = False,
        timeout: float | None = None,
    ) -> bool:
        """`add_port` for many devices ({name: port_id}) in one transaction, with
        external_ids:plugged-by=`plugged_by` if given. `settle_later`:
        return once it is committed, and let `settle()` wait for ovs-vswitchd to have it."""
        ofports = ofports or {}
        marks = {PLUGGED_BY: plugged_by} if plugged_by else {}

        def mutate(txn: Txn) -> bool:
            changed, names = False, _Names(self._idl)
            for name, port_id in ports.items():
                changed |= self._ensure_port(
                    txn, names, bridge, name, "", None, {IFACE_ID: port_id, **marks}, ofports.get(name)
                )
            return changed

        return self._transact(f"add {len(ports)} port(s) to {bridge}", mutate, wait or settle_later,
                              timeout, block=not settle_later)  # fmt: skip

    def settle(self, timeout: float | None = None) -> None:
        """Return once ovs-vswitchd has applied the changes made with `settle_later`."""
        with self._lock:
            if self._cfg_due:
                self._wait_cfg(self._cfg_due, self._deadline(timeout), "wait for ovs-vswitchd")
                self._cfg_due = 0

    def remove_port(self, bridge: str, name: str, *, wait: bool = False,
                    timeout: float | None = None) -> bool:  # fmt: skip
        """Take port `name` off `bridge`; True if it was there."""
        return self.remove_ports(bridge, [name], wait=wait, timeout=timeout)

    def remove_ports(self, bridge: str, names: Iterable[str], *, wait: bool = False,
                     timeout: float | None = None) -> bool:  # fmt: skip
        """`remove_port` for many names in one transaction."""
        names = set(names)

        def mutate(txn: Txn) -> bool:
            br = self._find("Bridge", bridge)
            if br is None:
                return False
            gone = [p for p in br.ports if p.name in names]
            removed = sorted(p.name for p in gone)
            for port in gone:
                br.delvalue("ports", port)
                for iface in port.interfaces:
                    iface.delete()
                port.delete()
            if removed:
                self._note("ovs.ports_removed", bridge=bridge, ports=removed)
            return bool(removed)

        return self._transact(f"remove ports from {bridge}", mutate, wait, timeout)

    # --- inside ------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _ready(self, deadline: float) -> None:
        if self._idl is None:
            self.connect(max(0.0, deadline - time.monotonic()))
        else:
            self._sync(deadline)

    def _sync(self, deadline: float) -> None:
        """Run the IDL until the connection is up and the replica in sync (or raise)."""
        idl = self._idl
        assert idl is not None
        started = time.monotonic()
        while True:
            idl.run()
            idl.run()  # the first run may only read an EOF; the second acts on it
            if self.connected:
                self._down = False
                seqno = idl._session.get_seqno()
                if self._session_seqno is None:
                    self._session_seqno = seqno
                elif seqno != self._session_seqno:
                    self._session_seqno = seqno
                    self.resyncs += 1
                    self._log.info("ovs.reconnected", resyncs=self.resyncs)
                return
            if not self._down and self._session_seqno is not None:
                self._down = True
                self._log.warning("ovs.disconnected")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApplyError(
                    f"OVSDB at {self.remote} not reachable or not in sync after "
                    f"{time.monotonic() - started:.2f} s: check that ovsdb-server runs and "
                    f"listens there",
                    grpc.StatusCode.UNAVAILABLE,
                )
            self._block(idl, None, left)

    @staticmethod
    def _block(idl: ovs.db.idl.Idl, txn: Txn | None, left: float) -> None:
        poller = ovs.poller.Poller()
        idl.wait(poller)
        if txn is not None:
            txn.wait(poller)
        poller.timer_wait(max(1, int(left * 1000)))
        poller.block()

    def _transact(self, what: str, mutate: Callable[[Txn], bool], wait: bool,
                  timeout: float | None, *, block: bool = True) -> bool:  # fmt: skip
        """Build a transaction with `mutate` from a fresh replica and commit it; rebuild and
        retry on TRY_AGAIN. `mutate` returns False when there is nothing to do. `wait`: until
        ovs-vswitchd has it, now or (not `block`) in `settle()`."""
        with self._lock:
            deadline = self._deadline(timeout)
            errors = 0
            while True:
                self._ready(deadline)
                idl = self._idl
                txn = Txn(idl)
                self._notes = []
                try:
                    changed = mutate(txn)
                except BaseException:
                    txn.abort()  # the IDL allows one open transaction: never leave it open
                    raise
                if not changed:
                    txn.abort()
                    return False
                if wait:
                    self._root(txn).increment("next_cfg")
                status = self._commit(idl, txn, deadline, what)
                if status in (Txn.SUCCESS, Txn.UNCHANGED):
                    for level, event, fields in self._notes:
                        getattr(self._log, level)(event, **fields)
                    if wait and block:
                        self._wait_cfg(txn.get_increment_new_value(), deadline, what)
                    elif wait:
                        self._cfg_due = max(self._cfg_due, txn.get_increment_new_value())
                    return changed
                if status == Txn.TRY_AGAIN:
                    self._log.info("ovs.txn_retry", what=what)
                    continue
                errors += 1
                if status == Txn.ERROR and errors < _RETRIES_ON_ERROR:
                    self._log.warning("ovs.txn_retry", what=what, error=txn.get_error())
                    continue
                raise ApplyError(f"OVSDB refused to {what}: {txn.get_error()}",
                                 grpc.StatusCode.INTERNAL)  # fmt: skip

    def _commit(self, idl: ovs.db.idl.Idl, txn: Txn, deadline: float, what: str) -> str:
        while True:
            status = txn.commit()
            if status != Txn.INCOMPLETE:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                txn.abort()
                raise ApplyError(f"OVSDB at {self.remote} did not answer in time to {what}: "
                                 f"check that ovsdb-server runs", grpc.StatusCode.UNAVAILABLE)  # fmt: skip
            idl.run()
            self._block(idl, txn, left)

    def _wait_cfg(self, next_cfg: int, deadline: float, what: str) -> None:
        idl = self._idl
        while True:
            self._sync(deadline)
            root = next(iter(self._rows("Open_vSwitch")), None)
            if root is not None and root.cur_cfg >= next_cfg:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApplyError(
                    f"ovs-vswitchd has not applied '{what}' in time (cur_cfg "
                    f"{root.cur_cfg if root else '?'} < {next_cfg}): check that it runs and "
                    f"reads {self.remote}", grpc.StatusCode.UNAVAILABLE)  # fmt: skip
            self._block(idl, None, left)

    def _ensure_port(self, txn: Txn, names: _Names, bridge: str, name: str, type_: str,
                     options: Mapping[str, str] | None, external_ids: Mapping[str, str],
                     ofport: int | None) -> bool:  # fmt: skip
        """One port with one interface called `name` on `bridge`; `options` None: leave them."""
        br = names.bridges.get(bridge)
        if br is None:
            raise ApplyError(f"bridge {bridge} does not exist: ensure_bridge it first",
                             grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
        iface = names.interfaces.get(name)
        port = names.ports.get(name)
        owner = None if port is None else names.owners.get(port.uuid)
        changed = False
        if port is None or iface is None or owner is None or list(port.interfaces) != [iface]:
            if owner is not None:
                owner.delvalue("ports", port)
                self._note("ovs.port_moved", port=name, old=owner.name, new=bridge)
            iface = txn.insert(self._table("Interface"))
            iface.name = name
            port = txn.insert(self._table("Port"))
            port.name, port.interfaces = name, [iface]
            br.addvalue("ports", port)
            self._note("ovs.port_added", bridge=bridge, port=name, type=type_ or "system",
                           **{k.replace("-", "_"): v for k, v in external_ids.items()})  # fmt: skip
            changed, fresh = True, True
        else:
            if owner is not br:
                owner.delvalue("ports", port)
                br.addvalue("ports", port)
                self._note("ovs.port_moved", port=name, old=owner.name, new=bridge)
                changed = True
            fresh = False
        if fresh or iface.type != type_:
            iface.type, changed = type_, True
        if options is not None and (fresh or dict(iface.options) != dict(options)):
            iface.options, changed = dict(options), True
        for key, value in external_ids.items():
            if fresh or iface.external_ids.get(key) != value:
                iface.setkey("external_ids", key, value)
                changed = True
        if ofport is not None and (fresh or list(iface.ofport_request) != [ofport]):
            iface.ofport_request, changed = ofport, True
        return changed

    def _note(self, event: str, level: str = "info", **fields: object) -> None:
        """Log `event` once the transaction being built has committed."""
        self._notes.append((level, event, fields))

    def _table(self, name: str):
        return self._idl.tables[name]

    def _rows(self, table: str) -> list:
        return list(self._idl.tables[table].rows.values())

    def _find(self, table: str, name: str):
        return next((r for r in self._rows(table) if r.name == name), None)

    def _root(self, txn: Txn):
        root = next(iter(self._rows("Open_vSwitch")), None)
        if root is None:  # a database nobody initialised (what `ovs-vsctl init` does)
            root = txn.insert(self._table("Open_vSwitch"))
        return root


class _Names:
    """The replica's bridges, ports and interfaces by name, and each port's bridge, read once
    per transaction (looking each one up would make plugging n ports cost n squared)."""

    def __init__(self, idl: ovs.db.idl.Idl) -> None:
        def by_name(table: str) -> dict:
            return {row.name: row for row in idl.tables[table].rows.values()}

        self.bridges, self.ports, self.interfaces = by_name("Bridge"), by_name("Port"), by_name("Interface")
        self.owners = {port.uuid: br for br in self.bridges.values() for port in br.ports}


def _interface(row) -> Interface:
    ofport = list(row.ofport)
    return Interface(
        name=row.name,
        port_id=row.external_ids.get(IFACE_ID, ""),
        ofport=int(ofport[0]) if ofport else None,
        link_state=(list(row.link_state) or [""])[0],
        type=row.type,
        error=(list(row.error) or [""])[0],
        plugged_by=row.external_ids.get(PLUGGED_BY, ""),
    )


def _get_schema(remote: str, deadline: float) -> dict:
    """The Open_vSwitch schema as the server has it (JSON-RPC get_schema, with a timeout)."""
    kind, _, address = remote.partition(":")
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = address
        elif kind == "tcp":
            host, _, port = address.rpartition(":")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            target = (host.strip("[]"), int(port))
        else:
            raise ApplyError(f"OVSDB remote {remote}: only unix: and tcp: are supported",
                             grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
        with sock:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.connect(target)
            request = {"method": "get_schema", "params": ["Open_vSwitch"], "id": 0}
            sock.sendall(json.dumps(request).encode())
            decoder, buffer = json.JSONDecoder(), b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the schema arrived")
                buffer += chunk
                try:
                    reply, _ = decoder.raw_decode(buffer.decode())
                except ValueError:
                    continue  # not all of it yet
                if reply.get("error"):
                    raise ConnectionError(f"get_schema: {reply['error']}")
                return reply["result"]
    except (OSError, ConnectionError) as e:
        raise ApplyError(f"cannot read the schema from OVSDB at {remote}: {e}: check that "
                         f"ovsdb-server runs and listens there", grpc.StatusCode.UNAVAILABLE) from e  # fmt: skip
