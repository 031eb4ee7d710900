"""The gRPC server: the agent's only door. Mutual TLS, an allow-list per service, bounded
messages, one access-log line per call, health and reflection, and the API's services.

Where data comes from and where it goes: a call arrives over TLS (or, for the local lab only,
plaintext on a unix socket), the `Edge` interceptor names the caller and checks the allow-list,
the servicer validates and reads or writes the store, and the edge turns whatever the servicer
raised into a status code (`status_for`, the one place where errors become codes) and logs the
call. `start`'s `observe_rpc`, if given, hears of every finished call (method, code name,
seconds), as the access log does: agent/metrics.py's RPC histograms.

Security, in the order a call meets it:

1. TLS with a required client certificate, signed by the CA in `server.tls.ca`
   (`require_client_auth=True`): a client without one, or with one from another CA, fails the
   handshake and never reaches Python. TCP listeners are always TLS; a plaintext TCP listener
   is refused by `ServerConfig` itself.
2. Identity: the certificate's common name and subject alternative names (what gRPC puts in
   the auth context). A call on a plaintext unix socket (only with `insecure_unix=True`, for
   the lab) has the identity `LOCAL` ("unix:local"); whoever can open the socket file is that
   identity, so the socket is made 0600 and belongs in a private directory.
3. Authorization: `allow` maps each API service to the identities that may call it; any of a
   caller's names will do. Health and reflection are open to every authenticated caller (they
   reveal the schema and "serving", nothing else). A service without an entry is closed.
   A refusal is PERMISSION_DENIED naming the identity and the service.

Robustness: messages are bounded both ways (`max_message_bytes`, 4 MiB by default); a unary call
whose deadline passed while it queued is refused, and its store calls wait no longer than the
deadline (`deadline_scope`); WatchEvents checks `context.time_remaining()`. Streaming calls
(WatchEvents, Health/Watch) each hold a worker thread while open, so they are capped per
identity (`max_streams_per_identity`) and in total (`max_streams`, at least two threads below
the pool's size), and a stream beyond a cap is answered RESOURCE_EXHAUSTED at once: whatever one
client opens, unary calls from others still find a thread. Health says NOT_SERVING until the
daemon's first reconcile pass is done (`set_serving`);
`grpc.so_reuseport` is off, so a second agent on the same port fails loudly instead of sharing
it; an unexpected exception becomes INTERNAL with its traceback in the log, never in the reply.

Node is served for real. Network is served only when the daemon reconciles every one of its
kinds (`start`'s `reconciled_kinds`), so that no call is acknowledged for objects that nothing
would apply; until then it answers UNIMPLEMENTED, as Compute does, saying which setting
turns it on. Metering is served when the daemon hands `start` its usage ledger's servicer.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.config import (
    API_SERVICES,
    COMPUTE,
    LOCAL,
    METERING,
    NETWORK,
    ConfigError,
    OvsConfig,
    ServerConfig,
    TlsFiles,
)
from agent.compute import service as compute_service
from agent.compute.service import Compute
from agent.metering.service import MeteringService
from agent.network import service as network_service
from agent.network.readback import Readback
from agent.network.specs import Host
from agent.node_service import NodeService, probe_capabilities
from agent.reconcile import ApplyError
from agent.store import (
    BatchRejected,
    Conflict,
    CursorExpired,
    DeadlineExceeded,
    Invalid,
    NotFound,
    Precondition,
    RequestConflict,
    StorageFull,
    Store,
    StoreError,
    deadline_scope,
)
from google.protobuf import any_pb2

from andromede.v1 import (
    common_pb2,
    compute_pb2,
    compute_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    node_pb2_grpc,
)

log = structlog.get_logger(__name__)

HEALTH = health.SERVICE_NAME  # grpc.health.v1.Health
_HEALTH_NAMES = ("", *API_SERVICES, HEALTH)  # "" is the whole server
# Open to every authenticated caller (v1 reflection too, for when grpcio-reflection serves it).
OPEN_SERVICES = frozenset(
    {HEALTH, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"}
)

NOT_YET = {
    COMPUTE: "Compute is off on this host: set [qemu] images_dir in the agent's config",
    NETWORK: "Network is off on this host: set [ovs] tunnel_ip in the agent's config",
    METERING: "Metering is not served by this server (the agent daemon serves it)",
}


# --- errors -> status codes: the one place -----------------------------------------------------

# The store's errors, each with its code (common.proto); anything else it raises on purpose (a
# closed store, a failing disk) is UNAVAILABLE: a retry later, or on another connection, is right.
_CODES: tuple[tuple[type[StoreError], grpc.StatusCode], ...] = (
    (Invalid, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Precondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (RequestConflict, grpc.StatusCode.ALREADY_EXISTS),
    (CursorExpired, grpc.StatusCode.OUT_OF_RANGE),
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_for(error: StoreError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an error a servicer or the store raised on purpose. Messages start
    with the field's name (common.proto). A rejected batch takes the code of its first fault."""
    cause = error.faults[0][2] if isinstance(error, BatchRejected) else error
    for kind, code in _CODES:
        if isinstance(cause, kind):
            return code, str(error)
    return grpc.StatusCode.UNAVAILABLE, f"the agent's store cannot serve this call: {error}"


def status_details(error: BatchRejected, code: grpc.StatusCode, message: str) -> bytes:
    """common.proto's Status (google.rpc.Status's bytes) with one ObjectErrors listing every
    object at fault, for the trailing metadata `grpc-status-details-bin`."""
    errors = common_pb2.ObjectErrors()
    for index, id, fault in error.faults:
        fault_code, _ = status_for(fault)
        errors.errors.add(index=index, id=id, code=fault_code.value[0],
                          field=getattr(fault, "field", ""), message=str(fault))  # fmt: skip
    detail = any_pb2.Any()
    detail.Pack(errors)
    return common_pb2.Status(code=code.value[0], message=message, details=[detail]).SerializeToString()


# --- stream caps ---------------------------------------------------------------------------------


class StreamSlots:
    """Counts open streaming calls, in total and per identity. A sync gRPC server holds one
    worker thread per open stream, so the caps (below the pool's size) keep threads free for
    unary calls whatever one client opens."""

    def __init__(self, total: int, per_identity: int) -> None:
        self._total = total
        self._per_identity = per_identity
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def take(self, identity: str) -> str | None:
        """Take a slot for `identity`; None, or why there is none (the slot is not taken)."""
        with self._lock:
            mine = self._open.get(identity, 0)
            if mine >= self._per_identity:
                return (
                    f"identity {identity!r} already holds {mine} open streams, the most one "
                    f"client may (server.max_streams_per_identity); close one, or share a stream"
                )
            if sum(self._open.values()) >= self._total:
                return (
                    f"the agent already serves {self._total} open streams "
                    f"(server.max_streams); retry later with backoff"
                )
            self._open[identity] = mine + 1
            return None

    def give_back(self, identity: str) -> None:
        with self._lock:
            left = self._open[identity] - 1
            if left:
                self._open[identity] = left
            else:
                del self._open[identity]


# --- identity, authorization and the access log --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    identity: str  # what the log shows: the certificate's CN (else its first SAN), or LOCAL
    names: frozenset[str]  # every name the allow-list may match


def peer_of(context: grpc.ServicerContext) -> Peer | None:
    """Who is calling: from the TLS client certificate, or LOCAL on a plaintext unix socket;
    None if the call has no identity."""
    auth = context.auth_context()
    if auth.get("transport_security_type") == [b"ssl"]:
        common = [v.decode(errors="replace") for v in auth.get("x509_common_name", [])]
        sans = [v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", [])]
        names = [n for n in (*common, *sans) if n and n != LOCAL]
        return Peer(names[0], frozenset(names)) if names else None
    if context.peer().startswith("unix:"):
        return Peer(LOCAL, frozenset({LOCAL}))
    return None


class Edge(grpc.ServerInterceptor):
    """Authorization, deadlines, stream caps, error mapping and the access log, around every
    handler."""

    def __init__(self, allow: Mapping[str, tuple[str, ...]], streams: StreamSlots,
                 observe: Callable[[str, str, float], None] | None = None) -> None:  # fmt: skip
        self._allow = {name: frozenset(ids) for name, ids in allow.items()}
        self._streams = streams
        self._observe = observe  # (method, code name, seconds) of each finished call

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED
        method = handler_call_details.method
        service = method.split("/")[1] if method.count("/") == 2 else method
        if handler.unary_unary:
            wrap, make = self._unary, grpc.unary_unary_rpc_method_handler
            behaviour = handler.unary_unary
        elif handler.unary_stream:
            wrap, make = self._stream, grpc.unary_stream_rpc_method_handler
            behaviour = handler.unary_stream
        elif handler.stream_unary:
            wrap, make = self._unary, grpc.stream_unary_rpc_method_handler
            behaviour = handler.stream_unary
        else:
            wrap, make = self._stream, grpc.stream_stream_rpc_method_handler
            behaviour = handler.stream_stream
        return make(
            wrap(behaviour, method, service),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behaviour: Callable, method: str, service: str) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            record = _Record(method, request)
            try:
                self._authorize(record, service, context)
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "the call's deadline passed before the agent could start it (the agent "
                        "is busy); retry with the same request_id",
                    )
                with deadline_scope(remaining):
                    return behaviour(request, context)
            except Exception as e:
                _fail(record, context, e)
            finally:
                self._finished(record, context)

        return call

    def _stream(self, behaviour: Callable, method: str, service: str) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            record = _Record(method, request)
            slot = None
            try:
                self._authorize(record, service, context)
                refusal = self._streams.take(record.identity)
                if refusal is not None:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                slot = record.identity
                yield from behaviour(request, context)
            except Exception as e:
                _fail(record, context, e)
            finally:
                if slot is not None:
                    self._streams.give_back(slot)
                self._finished(record, context)  # also when the client cancels (generator closed)

        return call

    def _finished(self, record: _Record, context: grpc.ServicerContext) -> None:
        code, seconds = record.log(context)
        if self._observe is not None:
            try:
                self._observe(record.method, code.name, seconds)
            except Exception:  # a metrics bug must not change the call's answer
                log.exception("rpc.observe_failed", method=record.method)

    def _authorize(self, record: _Record, service: str, context: grpc.ServicerContext) -> None:
        peer = peer_of(context)
        if peer is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no client identity: the client certificate has neither a common name nor a "
                "subject alternative name",
            )
        record.identity = peer.identity
        if service in OPEN_SERVICES:
            return
        if peer.names & self._allow.get(service, frozenset()):
            return
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"identity {peer.identity!r} may not call {service}; an operator can add it to the "
            f"agent's allow-list for {service}",
        )


class _Record:
    """One call's access-log line, filled in as the call goes."""

    __slots__ = ("method", "request_id", "identity", "started", "unexpected")

    def __init__(self, method: str, request: Any) -> None:
        self.method = method
        # Unary requests only (a streaming call's request is an iterator); "" if it has none.
        self.request_id = ""
        if hasattr(request, "DESCRIPTOR"):
            self.request_id = str(getattr(request, "request_id", ""))
        self.identity = ""
        self.started = time.monotonic()
        self.unexpected = False

    def log(self, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, float]:
        """Write the line; the call's code and its seconds."""
        code = context.code()
        if code is None:
            code = grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
        seconds = time.monotonic() - self.started
        fields = {
            "method": self.method,
            "identity": self.identity,
            "peer": context.peer(),
            "code": code.name,
            "ms": round(seconds * 1000, 2),
        }
        if self.request_id:
            fields["request_id"] = self.request_id
        if self.unexpected or code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.error("rpc.handled", **fields)
        elif code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            log.warning("rpc.handled", **fields)
        else:
            log.info("rpc.handled", **fields)
        return code, seconds


def _fail(record: _Record, context: grpc.ServicerContext, error: Exception) -> None:
    """Turn what a handler raised into the call's status; always raises."""
    if isinstance(error, StoreError):
        code, message = status_for(error)
        if isinstance(error, BatchRejected):
            context.set_trailing_metadata(
                ((STATUS_DETAILS_KEY, status_details(error, code, message)),)
            )
        context.abort(code, message)
    if isinstance(error, ApplyError):  # a read of the host (a packet trace) that failed
        context.abort(error.code, str(error))
    if context.code() is not None:
        raise error  # the handler (or _authorize) aborted with its own code
    record.unexpected = True
    log.exception("rpc.crashed", method=record.method, request_id=record.request_id)
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"the agent failed on {record.method}; its log has the details (event rpc.crashed)",
    )


# --- services that land later ----------------------------------------------------------------


def _not_yet(base: type, service: str, descriptor: Any) -> Any:
    def method(name: str) -> Callable:
        def answer(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{service}.{name}: {NOT_YET[service]}")

        return answer

    attributes = {m.name: method(m.name) for m in descriptor.methods}
    return type(f"NotYet{descriptor.name}", (base,), attributes)()


# --- the server ------------------------------------------------------------------------------


class AgentServer:
    """A started server. `ports` maps each listen address to its bound TCP port (0 for unix)."""

    def __init__(
        self,
        server: grpc.Server,
        executor: futures.ThreadPoolExecutor,
        health_servicer: health.HealthServicer,
        ports: dict[str, int],
        on_stop: tuple[Callable[[], object], ...] = (),
    ) -> None:
        self._server = server
        self._executor = executor
        self._health = health_servicer
        self.ports = ports
        self._on_stop = on_stop  # called first in stop(): open streams end without the grace

    def set_serving(self) -> None:
        """Say SERVING on grpc.health.v1 (for the server and each API service). The daemon
        calls it once the first reconcile pass is done, when it also sends READY=1; until then
        health answers NOT_SERVING, so a load balancer or probe waits for a reconciled host."""
        for name in _HEALTH_NAMES:
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = 5.0) -> None:
        """Say NOT_SERVING, let calls in flight finish for `grace` seconds, cancel the rest, and
        return once every handler has returned (a cancelled WatchEvents notices within POLL_S),
        so the caller may close the store next."""
        self._health.enter_graceful_shutdown()
        for call in self._on_stop:
            call()
        self._server.stop(grace).wait()
        self._executor.shutdown(wait=True)
        log.info("server.stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)


def start(
    config: ServerConfig,
    store: Store,
    *,
    reconciled_kinds: frozenset[str] = frozenset(),
    host: Host = Host(),
    ovs: OvsConfig | None = None,
    readback: Readback | None = None,
    compute: Compute | None = None,
    observe_rpc: Callable[[str, str, float], None] | None = None,
    metering: MeteringService | None = None,
) -> AgentServer:
    """Build the server for `config` over `store`, bind every listener and start serving.

    `reconciled_kinds`: the store kinds the daemon has a reconciler for (`Engine.kinds`); the
    Network service is served only if it covers all of `network_service.KINDS`. `host`: what
    the Network service checks objects against (this host's MTU limit and tunnel address).
    `ovs` and `readback`: this host's Open vSwitch, for GetNodeInfo's capabilities and dataplane
    status and the Network service's packet traces and flow lists (None: no OVS). `observe_rpc`:
    called with (method, code name, seconds) after every call (agent/metrics.py). `metering`:
    the Metering servicer over the daemon's usage ledger (None: UNIMPLEMENTED).
    Raises ConfigError naming the setting at fault (unreadable or mismatched TLS files, an
    address that cannot be bound)."""
    credentials = _server_credentials(config.tls) if config.tls is not None else None
    executor = futures.ThreadPoolExecutor(config.max_workers, thread_name_prefix="grpc")
    server = grpc.server(
        executor,
        interceptors=[
            Edge(config.allow, StreamSlots(config.max_streams, config.max_streams_per_identity),
                 observe_rpc)
        ],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    capabilities = probe_capabilities(
        tunnel_ip=str(host.tunnel_ip or ""),
        max_network_mtu=host.max_network_mtu if host.tunnel_ip else 0,
        datapath_type=ovs.datapath_type if ovs else "netdev",
        kvm=compute.kvm if compute is not None else None,
    )
    node_pb2_grpc.add_NodeServicer_to_server(
        NodeService(store, capabilities=capabilities,
                    dataplane=readback.status if readback else None), server
    )
    later = []
    if metering is None:
        later.append((METERING, metering_pb2, metering_pb2_grpc.MeteringServicer,
                      metering_pb2_grpc.add_MeteringServicer_to_server))  # fmt: skip
    else:
        metering_pb2_grpc.add_MeteringServicer_to_server(metering, server)
    if compute is None or not compute_service.KINDS <= reconciled_kinds:
        later.append((COMPUTE, compute_pb2, compute_pb2_grpc.ComputeServicer,
                      compute_pb2_grpc.add_ComputeServicer_to_server))  # fmt: skip
    else:
        compute_pb2_grpc.add_ComputeServicer_to_server(
            compute_service.servicer(store, compute.host, compute.runtimes), server
        )
    unreconciled = network_service.KINDS - reconciled_kinds
    if unreconciled:
        log.info("server.network_withheld", unreconciled=sorted(unreconciled))
        later.append((NETWORK, network_pb2, network_pb2_grpc.NetworkServicer,
                      network_pb2_grpc.add_NetworkServicer_to_server))  # fmt: skip
    else:
        network_pb2_grpc.add_NetworkServicer_to_server(
            network_service.servicer(store, host, readback), server
        )
    for service, module, base, add in later:
        descriptor = module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]]
        add(_not_yet(base, service, descriptor), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in _HEALTH_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*API_SERVICES, HEALTH, reflection.SERVICE_NAME), server
    )

    ports: dict[str, int] = {}
    try:
        for i, address in enumerate(config.listen):
            ports[address] = _bind(server, i, address, config.insecure_unix, credentials)
        server.start()
        for address in config.listen:
            if address.startswith("unix:"):
                path = Path(address[len("unix:"):])
                if not path.exists() or not stat.S_ISSOCK(path.stat().st_mode):
                    raise ConfigError(
                        f"server.listen[{config.listen.index(address)}]",
                        f"cannot listen on {address!r}: no socket was made",
                    )
                # Until this chmod the socket has the umask's mode: keep its directory private.
                os.chmod(path, 0o600)
    except BaseException:
        server.stop(None)
        executor.shutdown(wait=False)
        raise
    log.info(
        "server.started",
        listen=[f"{a} (port {p})" if p else a for a, p in ports.items()],
        tls=config.tls is not None,
        insecure_unix=config.insecure_unix,
        allow={k: list(v) for k, v in config.allow.items()},
    )
    return AgentServer(server, executor, health_servicer, ports,
                       on_stop=(metering.stop,) if metering is not None else ())  # fmt: skip


def _bind(
    server: grpc.Server,
    i: int,
    address: str,
    insecure_unix: bool,
    credentials: grpc.ServerCredentials | None,
) -> int:
    """Add one listener; its TCP port (0 for a unix socket)."""
    unix = address.startswith("unix:")
    if unix:
        directory = Path(address[len("unix:"):]).parent
        if not directory.is_dir():
            raise ConfigError(
                f"server.listen[{i}]",
                f"directory {directory} does not exist; create it (systemd's "
                f"RuntimeDirectory= does) or choose another path",
            )
    try:
        if unix and insecure_unix:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:
        raise ConfigError(
            f"server.listen[{i}]",
            f"cannot listen on {address!r}: {e} (in use by another process, perhaps "
            f"another agent? or not an address of this host)",
        ) from None
    if not port and not unix:
        raise ConfigError(
            f"server.listen[{i}]", f"cannot listen on {address!r}: gRPC could not bind it"
        )
    return 0 if unix else port


def _server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS from PEM files, checked now so that a wrong file fails the start with its
    name rather than every handshake later."""
    cert_pem = _read_pem("server.tls.cert", tls.cert)
    key_pem = _read_pem("server.tls.key", tls.key)
    ca_pem = _read_pem("server.tls.ca", tls.client_ca)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise ConfigError("server.tls.cert", f"{tls.cert} is not a PEM certificate: {e}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            "server.tls.key", f"{tls.key} is not an unencrypted PEM key: {e}"
        ) from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as e:
        raise ConfigError(
            "server.tls.ca", f"{tls.client_ca} holds no PEM certificate: {e}"
        ) from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ConfigError(
            "server.tls.key", f"{tls.key} is not the key of the certificate {tls.cert}"
        )
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def _read_pem(key: str, path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
