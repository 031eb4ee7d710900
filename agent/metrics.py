"""The agent's own health as Prometheus metrics, and the HTTP(S) endpoint that serves them.

Where data comes from and where it goes: `AgentMetrics` owns one `CollectorRegistry` (never
prometheus_client's global one, so agents and tests can run side by side in one process). Some
figures are pushed into it as things happen: the reconcile engine's `on_pass` (agent/reconcile.py)
calls `observe_pass` after every pass, and the gRPC edge (agent/server.py's `Edge`) calls
`observe_rpc` after every call. The others are read at scrape time from their owners, through
collectors the daemon registers once their owner exists: the store's generations
(`collect_store`), the OVS restart watch's count (`collect_ovs`), and the per-tenant usage of the
ledger (`collect_usage`, any function that returns the current rows). `serve` answers
GET /metrics on `[metrics] listen` (agent/config.py's `MetricsConfig`) from its own threads;
nothing here writes anything.

The metrics (labels in braces; histograms have _bucket, _count and _sum series):

    andromede_reconcile_pass_seconds               histogram: one pass, snapshot to record
    andromede_reconciler_pass_seconds{reconciler}  histogram: one reconciler's ensure + prune in
                                                   a pass ("network", "compute", "maintenance")
    andromede_generation_desired                   gauge: the store's generation
    andromede_generation_applied                   gauge: the generation the whole host acked
    andromede_generation_lag                       gauge: desired - applied (0: caught up)
    andromede_rpc_duration_seconds{method,code}    histogram: gRPC calls by full method name
                                                   ("/andromede.v1.Node/GetNodeInfo") and status
                                                   code ("OK"); a stream counts its whole life
    andromede_ovs_restarts_total                   counter: ovs-vswitchd restarts seen (with OVS)
    andromede_tenant_packets_total{tenant,direction}                counter, from the ledger
    andromede_tenant_bytes_total{tenant,direction}                  counter
    andromede_tenant_meter_dropped_packets_total{tenant,direction}  counter: the meter's drops
    andromede_tenant_meter_dropped_bytes_total{tenant,direction}    counter
    andromede_usage_up                             gauge: 1 if the last read of the usage worked,
                                                   0 if it raised (then no tenant rows)

The endpoint: plain HTTP on loopback, or with `tls` HTTPS with the gRPC server's certificate
and key and a client certificate required, signed by `[server.tls] ca` (any identity the CA
signed: the endpoint has no allow-list). Each connection is served on a thread of its own, at
most MAX_SCRAPES at once (more are closed at once), and is dropped after REQUEST_TIMEOUT_S of
silence, in the TLS handshake too (made on that thread, never on the accepting one), so a
client that connects and says nothing holds nothing but its own thread, for a while. `stop()`
closes the socket and returns once every request thread has ended.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.config import ConfigError, MetricsConfig, TlsFiles
from agent.reconcile import PassSummary
from agent.store import Store, StoreError

log = structlog.get_logger(__name__)

PATH = "/metrics"
MAX_SCRAPES = 4  # connections served at once
REQUEST_TIMEOUT_S = 10.0  # the longest a connection may stay silent (socket timeout)
# Reconcile passes take from under a millisecond (nothing to do) to tens of seconds (a first pass
# over thousands of VMs); gRPC calls from a fraction of a millisecond to the deadline.
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                float("inf"))  # fmt: skip
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
               30, float("inf"))  # fmt: skip

UsageRow = tuple[str, str, int, int, int, int]
"""(tenant_id, direction, packets, bytes, meter_dropped_packets, meter_dropped_bytes), totals
since the ledger began (counters: they only grow)."""
UsageSource = Callable[[], Iterable[UsageRow]]


class RestartCount(Protocol):
    """What `collect_ovs` reads (agent/network/ovs.py's RestartWatch)."""

    restarts: int


class AgentMetrics:
    """The registry and the agent's metrics. `observe_*` are called by their owners as things
    happen (from any thread); `collect_*` register what is read at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._pass = Histogram(
            "andromede_reconcile_pass_seconds",
            "Time of one reconcile pass, from the store snapshot to the recorded statuses.",
            buckets=PASS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._reconciler = Histogram(
            "andromede_reconciler_pass_seconds",
            "Time one reconciler spent in a pass (ensure and prune).",
            ("reconciler",), buckets=PASS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._rpc = Histogram(
            "andromede_rpc_duration_seconds",
            "gRPC calls by full method name and status code, from the call's start to its end "
            "(for a stream, its whole life).",
            ("method", "code"), buckets=RPC_BUCKETS, registry=self.registry,
        )  # fmt: skip

    # --- pushed ----------------------------------------------------------------------------

    def observe_pass(self, summary: PassSummary, seconds: Mapping[str, float]) -> None:
        """The engine's `on_pass`: one pass and each reconciler's share of it."""
        self._pass.observe(summary.ms / 1000)
        for name, spent in seconds.items():
            self._reconciler.labels(reconciler=name).observe(spent)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """The gRPC edge's observer: one finished call."""
        self._rpc.labels(method=method, code=code).observe(seconds)

    # --- read at scrape time ---------------------------------------------------------------

    def collect_store(self, store: Store) -> None:
        """The desired and applied generations, and the lag between them."""
        self.registry.register(_Generations(store))

    def collect_ovs(self, watch: RestartCount) -> None:
        """The ovs-vswitchd restarts `watch` has seen."""
        self.registry.register(_OvsRestarts(watch))

    def collect_usage(self, usage: UsageSource) -> None:
        """Per-tenant usage: `usage()` is called at each scrape and returns the current rows."""
        self.registry.register(_Usage(usage))


class _Generations:
    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("andromede_generation_desired",
                              "The store's generation: changes of desired state accepted."),
            GaugeMetricFamily("andromede_generation_applied",
                              "The generation the whole host last reached (the ack)."),
            GaugeMetricFamily("andromede_generation_lag",
                              "Desired minus applied generation: 0 when the host is caught up."),
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        try:
            # Applied first: it never passes the desired generation read after it.
            applied = self._store.applied_generation()
            desired = self._store.generation()
        except StoreError as e:  # closed or failing: the scrape goes on without these
            log.warning("metrics.store_unreadable", error=str(e))
            return
        families = self._families()
        for family, value in zip(families, (desired, applied, max(0, desired - applied))):
            family.add_metric([], value)
        yield from families


class _OvsRestarts:
    def __init__(self, watch: RestartCount) -> None:
        self._watch = watch

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("andromede_ovs_restarts", "")

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "andromede_ovs_restarts",
            "ovs-vswitchd restarts seen (its flows lost, then put back) since the agent started.",
            value=self._watch.restarts,
        )


_USAGE = (
    ("packets", "Packets of the tenant in this direction, as the usage ledger counts them."),
    ("bytes", "Bytes of the tenant in this direction, as the usage ledger counts them."),
    ("meter_dropped_packets", "Packets of the tenant dropped by its rate limit's meter."),
    ("meter_dropped_bytes", "Bytes of the tenant dropped by its rate limit's meter."),
)


class _Usage:
    def __init__(self, usage: UsageSource) -> None:
        self._usage = usage

    def describe(self) -> Iterator[Metric]:
        yield from self._families()
        yield GaugeMetricFamily("andromede_usage_up", "")

    @staticmethod
    def _families() -> list[CounterMetricFamily]:
        labels = ("tenant", "direction")
        return [CounterMetricFamily(f"andromede_tenant_{name}", help, labels=labels)
                for name, help in _USAGE]  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        try:
            for tenant, direction, *values in self._usage():
                for family, value in zip(families, values, strict=True):
                    family.add_metric([tenant, direction], value)
        except Exception as e:  # the ledger's trouble must not take the agent's health with it
            log.warning("metrics.usage_unreadable", error=str(e) or type(e).__name__)
            families, up = self._families(), 0
        else:
            up = 1
        yield from families
        yield GaugeMetricFamily(
            "andromede_usage_up", "1 if the last read of the usage ledger worked, else 0.", value=up
        )


# --- the endpoint ----------------------------------------------------------------------------


class MetricsServer:
    """A started endpoint: `address` is "ip:port" as bound (the port picked when 0 was asked)."""

    def __init__(self, server: _HttpServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, self.port = server.server_address[:2]
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.tls = server.tls is not None

    def stop(self) -> None:
        """Stop accepting, close the socket, and return once every request has ended."""
        self._server.shutdown()
        self._server.server_close()  # joins the request threads (block_on_close)
        self._thread.join()
        log.info("metrics.stopped", listen=self.address)


def serve(config: MetricsConfig, registry: CollectorRegistry,
          tls: TlsFiles | None) -> MetricsServer | None:  # fmt: skip
    """Start serving `registry` on `config.listen` (None when it is ""), with `tls` (the gRPC
    server's files) when `config.tls`. Raises ConfigError naming the setting at fault: an
    address that cannot be bound, TLS files that cannot be used."""
    if not config.listen:
        return None
    context = None
    if config.tls:
        if tls is None:
            raise ConfigError("metrics.tls", "true needs [server.tls] cert, key and ca")
        context = _tls_context(tls)
    host, port = config.address
    try:
        server = _HttpServer((host, port), _app(registry), context)
    except OSError as e:
        raise ConfigError(
            "metrics.listen",
            f"cannot listen on {config.listen!r}: {e.strerror or e} (in use by another process, "
            f"perhaps another agent? choose another port, or \"\" to turn the endpoint off)",
        ) from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="metrics", daemon=True)  # fmt: skip
    thread.start()
    started = MetricsServer(server, thread)
    log.info("metrics.started", listen=started.address, port=started.port, tls=started.tls,
             path=PATH)  # fmt: skip
    return started


def _app(registry: CollectorRegistry) -> Callable:
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"the metrics are at {PATH}\n".encode()]
        return metrics(environ, start_response)

    return app


def _tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """The gRPC server's certificate and key; client certificates required, from its CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("server.tls.cert", f"metrics.tls: cannot use {tls.cert} with the key "
                          f"{tls.key}: {e}") from None  # fmt: skip
    try:
        context.load_verify_locations(cafile=tls.client_ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("server.tls.ca", f"metrics.tls: cannot use {tls.client_ca} as the "
                          f"clients' CA: {e}") from None  # fmt: skip
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Nothing: a scrape every few seconds is not worth a log line."""

    def get_stderr(self):  # wsgiref's errors go to the log, not to stderr
        return _LogStream()


class _LogStream:
    def write(self, text: str) -> None:
        if text.strip():
            log.warning("metrics.app_error", error=text.strip())

    def flush(self) -> None:
        """Nothing to flush: every write went to the log at once."""


class _HttpServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per connection, each bounded in time and in number, with
    TLS (when given) negotiated on that thread."""

    daemon_threads = False
    block_on_close = True  # server_close() waits for the request threads
    allow_reuse_address = True  # rebind at once after a restart (TIME_WAIT); never shares a port
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], app: Callable,
                 tls: ssl.SSLContext | None) -> None:  # fmt: skip
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.tls = tls
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        super().__init__(address, _Handler)
        self.set_app(app)

    def server_bind(self) -> None:
        # As WSGIServer's, less HTTPServer's socket.getfqdn(), a DNS lookup at start.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()

    def get_request(self) -> tuple[socket.socket, object]:
        conn, peer = self.socket.accept()
        conn.settimeout(REQUEST_TIMEOUT_S)
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, peer

    def process_request(self, request: socket.socket, client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("metrics.busy", peer=str(client_address), max_scrapes=MAX_SCRAPES)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            if self.tls is not None:
                try:
                    request.do_handshake()
                except (OSError, ValueError) as e:  # no or a foreign client certificate, a timeout
                    log.info("metrics.refused", peer=str(client_address), error=str(e))
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        log.info("metrics.request_failed", peer=str(client_address), error=str(error))
