"""The Node service: what this host is and offers, its maintenance mode, and the event stream.

Where data comes from and where it goes (API -> store -> reconciler -> drivers):

- GetNodeInfo: the capabilities probed once when the servicer is made (`probe_capabilities`:
  /dev/kvm, `ovs-vswitchd --version`, `qemu-system-x86_64 --version`), plus the store's
  generations, maintenance mode and object counts, read at each call.
- GetInventory: agent/inventory.py, read at each call.
- SetMaintenance: validated, then stored as desired state (kind "node", id "maintenance", spec
  = a serialized `Maintenance` without `since`) with the client's request_id; answered after
  the commit with the generation it was accepted at. A replay returns the first answer.
- WatchEvents: the store's event log (`events_since`, `wait_for_event`), from the request's
  cursor (or the oldest kept event, or now), filtered, with heartbeats, until the client
  cancels or the deadline passes.

Errors: every check raises `agent.store.Invalid(field, message)` (the one validation error
type; ids follow the store's one id rule, `check_id`), and the store raises its own
`StoreError`s; the server's edge (agent/server.py, `status_for`) turns each into a gRPC
status, in one place. Nothing here is stored before every field has been checked.

Cursors are opaque to clients: `v1:<store id>:<event cursor>`, so a cursor from another store
(the state directory was wiped) is recognised and answered OUT_OF_RANGE rather than silently
resumed at the wrong place. The List calls of later services hand out the same cursors
(`encode_cursor`).
"""

from __future__ import annotations

import errno
import fcntl
import importlib.metadata
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from agent import inventory
from agent.store import (
    CursorExpired,
    Event,
    EventType,
    Invalid,
    Object,
    Put,
    Result,
    Store,
    check_id,
)
from andromede.v1 import common_pb2, events_pb2, node_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

MAINTENANCE = ("node", "maintenance")  # where SetMaintenance stores its desired state
MAX_REASON_CHARS = 1_024
MAX_WATCH_IDS = 1_000
MAX_EVENTS_PER_RESPONSE = 1_000
DEFAULT_HEARTBEAT_S = 30
MAX_HEARTBEAT_S = 300
POLL_S = 0.25  # how often a waiting WatchEvents looks at cancellation and its deadline

QEMU_VERSION = r"QEMU emulator version (\d+(?:\.\d+)+)"  # in `qemu-system-x86_64 --version`
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00), linux/kvm.h
KVM_API_VERSION = 12  # the only version the kernel has ever had

# The store's kind names (agent/store.py) and the API's ResourceKind values.
KINDS = {
    "node": common_pb2.RESOURCE_KIND_NODE,
    "vm": common_pb2.RESOURCE_KIND_VM,
    "network": common_pb2.RESOURCE_KIND_NETWORK,
    "port": common_pb2.RESOURCE_KIND_PORT,
    "security_group": common_pb2.RESOURCE_KIND_SECURITY_GROUP,
    "tunnel_endpoint": common_pb2.RESOURCE_KIND_TUNNEL_ENDPOINT,
    "l2_entry": common_pb2.RESOURCE_KIND_L2_ENTRY,
    "rate_limit": common_pb2.RESOURCE_KIND_RATE_LIMIT,
}
_EVENT_TYPES = {
    EventType.CREATED: events_pb2.EVENT_TYPE_CREATED,
    EventType.UPDATED: events_pb2.EVENT_TYPE_UPDATED,
    EventType.DELETED: events_pb2.EVENT_TYPE_DELETED,
    EventType.STATUS: events_pb2.EVENT_TYPE_STATUS,
    EventType.NODE_APPLIED: events_pb2.EVENT_TYPE_NODE_APPLIED,
}
APPLY_STATES = {  # the store's Status values -> ApplyState
    "pending": common_pb2.APPLY_STATE_PENDING,
    "applied": common_pb2.APPLY_STATE_APPLIED,
    "failed": common_pb2.APPLY_STATE_FAILED,
}
_CURSOR = re.compile(r"v1:([0-9a-f]{1,64}):(\d{1,18})")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than tab and newline


# --- capabilities ----------------------------------------------------------------------------


class KvmAnswer(Protocol):
    """A probe guest's answer (agent/compute/kvm.py's KvmResult)."""

    usable: bool
    detail: str


@dataclass(frozen=True, slots=True)
class KvmProbe:
    device_ok: bool  # /dev/kvm opens read-write and answers KVM_GET_API_VERSION with 12
    detail: str


def probe_kvm(path: str = "/dev/kvm") -> KvmProbe:
    """A cheap check of the KVM device. It does not prove that a guest runs (nested
    virtualisation without VMX passes it and still fails): agent/compute/kvm.py's probe guest
    starts with it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return KvmProbe(False, f"no {path}: load kvm_intel or kvm_amd, or pass the device in")
    except PermissionError:
        return KvmProbe(
            False, f"cannot open {path}: permission denied; run the agent in the kvm group"
        )
    except OSError as e:
        return KvmProbe(False, f"cannot open {path}: {os.strerror(e.errno or errno.EIO)}")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        why = os.strerror(e.errno or errno.EIO)
        return KvmProbe(False, f"{path}: KVM_GET_API_VERSION failed: {why}")
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return KvmProbe(False, f"{path}: KVM API version {version}, expected {KVM_API_VERSION}")
    return KvmProbe(True, f"{path}: KVM API version {version}")


def tool_version(argv: list[str], pattern: str, timeout: float = 5.0) -> str:
    """The version a tool prints with `argv`, matched by `pattern`'s first group; "" if the
    tool is missing, fails or prints something else."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(pattern, done.stdout)
    return match.group(1) if match and done.returncode == 0 else ""


def probe_capabilities(
    tunnel_ip: str = "", max_network_mtu: int = 0, datapath_type: str = "netdev",
    kvm: KvmAnswer | None = None,
) -> node_pb2.Capabilities:
    """What this host can do. `kvm`: the compute side's probe guest's answer
    (agent/compute/kvm.py); without one (compute off) KVM is never claimed, and the detail says
    what the device check alone found. `tunnel_ip` and `max_network_mtu` come from the
    config's [ovs] table ("" and 0: networking off); stateful groups need OVS's conntrack,
    which both datapaths have."""
    if kvm is not None:
        kvm_usable, kvm_detail = kvm.usable, kvm.detail
    else:
        device = probe_kvm()
        kvm_usable, kvm_detail = False, (
            f"not probed with a guest (compute is off: no [qemu] images_dir); {device.detail}"
        )
    return node_pb2.Capabilities(
        kvm_usable=kvm_usable,
        kvm_detail=kvm_detail,
        qemu_version=tool_version(
            ["qemu-system-x86_64", "--version"], QEMU_VERSION
        ),
        ovs_version=tool_version(["ovs-vswitchd", "--version"], r"\(Open vSwitch\)\s+(\S+)"),
        datapath_type=(node_pb2.DATAPATH_TYPE_NETDEV if datapath_type == "netdev"
                       else node_pb2.DATAPATH_TYPE_SYSTEM),  # fmt: skip
        tunnel_ip=tunnel_ip,
        max_network_mtu=max_network_mtu,
        conntrack=bool(tunnel_ip),
        userspace_engine=importlib.util.find_spec("numba") is not None,
    )


def agent_version() -> str:
    try:
        return importlib.metadata.version("andromede")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# --- cursors ---------------------------------------------------------------------------------


def encode_cursor(store_id: str, position: int) -> str:
    return f"v1:{store_id}:{position}"


def decode_cursor(text: str, store_id: str) -> int:
    """The event position a cursor names. Raises Invalid (malformed) or CursorExpired (from
    another store)."""
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise Invalid(
            "cursor",
            f"malformed: {_show(text)} is not a cursor this API handed out; use the `cursor` of "
            f"a WatchEventsResponse or List response, or empty to start from now",
        )
    if match.group(1) != store_id:
        raise CursorExpired(
            f"belongs to store {match.group(1)}, but this host's store is {store_id} (the state "
            f"directory was wiped): resync with the List calls, then watch from their cursor"
        )
    return int(match.group(2))


# --- the servicer ----------------------------------------------------------------------------


class NodeService(node_pb2_grpc.NodeServicer):
    """The Node servicer over one store. Threads: any number of calls at once (the store
    serialises its own work); each WatchEvents stream holds a worker thread while it lasts, so
    the server's edge caps them (agent/server.py, StreamSlots)."""

    def __init__(
        self,
        store: Store,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        capabilities: node_pb2.Capabilities | None = None,
        dataplane: Callable[[], node_pb2.DataplaneStatus] | None = None,
    ) -> None:
        self._store = store
        self._state_dir = Path(state_dir) if state_dir is not None else store.path.parent
        self._started_at = Timestamp()
        self._started_at.GetCurrentTime()
        self._hostname = socket.gethostname()  # no DNS lookup: GetNodeInfo never waits on DNS
        self._version = agent_version()
        self._boot_id = _read("/proc/sys/kernel/random/boot_id").strip()
        self._capabilities = capabilities if capabilities is not None else probe_capabilities()
        self._dataplane = dataplane  # read at each GetNodeInfo (None: networking off)
        log.info(
            "node.probed",
            kvm_usable=self._capabilities.kvm_usable,
            kvm_detail=self._capabilities.kvm_detail,
            ovs_version=self._capabilities.ovs_version,
            qemu_version=self._capabilities.qemu_version,
        )

    # --- reads ---------------------------------------------------------------------------

    def GetNodeInfo(self, request, context):
        snapshot = self._store.snapshot()
        info = node_pb2.NodeInfo(
            hostname=self._hostname,
            agent_version=self._version,
            api_versions=["v1"],
            started_at=self._started_at,
            boot_id=self._boot_id,
            store_id=snapshot.store_id,
            desired_generation=snapshot.generation,
            applied_generation=snapshot.applied_generation,
            capabilities=self._capabilities,
            maintenance=_maintenance(snapshot.of(MAINTENANCE[0]).get(MAINTENANCE[1])),
        )
        if self._dataplane is not None:
            info.dataplane.CopyFrom(self._dataplane())
            info.capabilities.ovs_connected = info.dataplane.ovs_connected
        for kind, value in KINDS.items():
            if kind == "node":
                continue
            objects = snapshot.of(kind).values()
            info.resource_counts.add(
                kind=value,
                total=len(objects),
                applied=sum(o.status == "applied" for o in objects),
                failed=sum(o.status == "failed" for o in objects),
            )
        return node_pb2.GetNodeInfoResponse(info=info)

    def GetInventory(self, request, context):
        vms = [o.spec for o in self._store.objects("vm")]
        return node_pb2.GetInventoryResponse(
            inventory=inventory.read_inventory(self._state_dir, vms)
        )

    # --- mutations -----------------------------------------------------------------------

    def SetMaintenance(self, request, context):
        check_id("request_id", request.request_id)
        reason = request.reason if request.enabled else ""  # "ignored when enabled is false"
        if len(reason) > MAX_REASON_CHARS:
            raise Invalid(
                "reason", f"must be at most {MAX_REASON_CHARS} characters, got {len(reason)}"
            )
        if _CONTROL.search(reason):
            raise Invalid("reason", "must not hold control characters (other than tab and newline)")
        spec = node_pb2.Maintenance(enabled=request.enabled, reason=reason)

        def reply(results: tuple[Result, ...]) -> bytes:
            # Inside the commit's transaction: the mode as this request left it, kept with the
            # request so that a replay answers exactly this, whatever happened since.
            return node_pb2.SetMaintenanceResponse(
                generation=results[0].generation,
                maintenance=_maintenance(self._store.get(*MAINTENANCE)),
            ).SerializeToString(deterministic=True)

        put = Put(*MAINTENANCE, spec.SerializeToString(deterministic=True))
        committed = self._store.commit([put], request.request_id, reply=reply)
        # A request remembered before the store kept replies (schema 1) is answered anew.
        return node_pb2.SetMaintenanceResponse.FromString(
            committed.reply or reply(committed.results)
        )

    # --- events --------------------------------------------------------------------------

    def WatchEvents(self, request, context):
        kinds, ids, heartbeat_s = _check_watch(request)
        store_id = self._store.store_id()
        if request.cursor:
            position = decode_cursor(request.cursor, store_id)
            self._store.events_since(position, limit=1)  # CursorExpired now, before the stream
        elif request.from_oldest:
            position = self._store.oldest_cursor()
        else:
            position = self._store.last_cursor()
        yield from self._watch(context, store_id, position, kinds, ids, heartbeat_s)

    def _watch(
        self,
        context: grpc.ServicerContext,
        store_id: str,
        position: int,
        kinds: frozenset[int],
        ids: frozenset[str],
        heartbeat_s: float,
    ) -> Iterator[events_pb2.WatchEventsResponse]:
        # The first response comes at once (with the events already due, if any), so the
        # watcher knows the stream is up and has a cursor before anything else happens.
        last_sent: float | None = None
        while True:
            batch = self._store.events_since(position, limit=MAX_EVENTS_PER_RESPONSE)
            if batch:
                position = batch[-1].cursor
                matching = [e for e in map(to_proto, batch) if _matches(e, kinds, ids)]
                if matching or last_sent is None:
                    yield events_pb2.WatchEventsResponse(
                        events=matching, cursor=encode_cursor(store_id, position)
                    )
                    last_sent = time.monotonic()
                continue  # there may be more right away
            now = time.monotonic()
            if last_sent is None or now - last_sent >= heartbeat_s:
                yield events_pb2.WatchEventsResponse(cursor=encode_cursor(store_id, position))
                last_sent = now = time.monotonic()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
            if not context.is_active():
                return  # the client went away; the edge logs CANCELLED
            wait = min(POLL_S, max(0.0, heartbeat_s - (now - last_sent)))
            if remaining is not None:
                wait = min(wait, remaining)
            self._store.wait_for_event(position, wait)


# --- checks and conversions ------------------------------------------------------------------


def _check_watch(
    request: events_pb2.WatchEventsRequest,
) -> tuple[frozenset[int], frozenset[str], float]:
    if request.from_oldest and request.cursor:
        raise Invalid(
            "from_oldest",
            "must be false when a cursor is given: the stream starts after the cursor or with "
            "the oldest kept event, not both; send one of them",
        )
    known = set(common_pb2.ResourceKind.values()) - {common_pb2.RESOURCE_KIND_UNSPECIFIED}
    for i, kind in enumerate(request.kinds):
        if kind not in known:
            raise Invalid(
                f"kinds[{i}]", f"must be a ResourceKind other than UNSPECIFIED, got {kind}"
            )
    if len(request.object_ids) > MAX_WATCH_IDS:
        raise Invalid(
            "object_ids", f"at most {MAX_WATCH_IDS} ids, got {len(request.object_ids)}"
        )
    for i, object_id in enumerate(request.object_ids):
        check_id(f"object_ids[{i}]", object_id)
    heartbeat = request.heartbeat_interval_s or DEFAULT_HEARTBEAT_S
    if not 1 <= heartbeat <= MAX_HEARTBEAT_S:
        raise Invalid(
            "heartbeat_interval_s",
            f"must be 1..{MAX_HEARTBEAT_S} seconds (0: {DEFAULT_HEARTBEAT_S}), got {heartbeat}",
        )
    return frozenset(request.kinds), frozenset(request.object_ids), float(heartbeat)


def to_proto(event: Event) -> events_pb2.Event:
    kind = KINDS.get(event.kind, common_pb2.RESOURCE_KIND_NODE if not event.kind else 0)
    out = events_pb2.Event(
        type=_EVENT_TYPES[event.type],
        kind=kind,
        # Host-wide events carry no id (events.proto); the store's "node" objects are the host.
        object_id="" if kind == common_pb2.RESOURCE_KIND_NODE else event.id,
        generation=event.generation,
        state=APPLY_STATES.get(event.status, common_pb2.APPLY_STATE_UNSPECIFIED),
        code=event.code,
        message=event.message,
        sequence=event.cursor,
    )
    out.time.FromNanoseconds(int(event.at * 1e9))
    return out


def _maintenance(stored: Object | None) -> node_pb2.Maintenance:
    """The maintenance mode a stored spec says (off if none was ever set), `since` the time
    that spec was put."""
    if stored is None:
        return node_pb2.Maintenance(enabled=False)
    mode = node_pb2.Maintenance.FromString(stored.spec)
    mode.since.FromNanoseconds(int(stored.updated_at * 1e9))
    return mode


def _matches(event: events_pb2.Event, kinds: frozenset[int], ids: frozenset[str]) -> bool:
    return (not kinds or event.kind in kinds) and (not ids or event.object_id in ids)


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
