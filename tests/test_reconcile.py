"""The reconciler framework against a real Store: level-triggered passes, honest acks, backoff,
order, the watchdog's progress, and a deletion that survives kill -9 of the agent.

The reconcilers are a recording double (the unit side of agent/reconcile.py's seam) and
`ScratchFiles`, a reconciler over real files the test can observe; the store is the real SQLite
one in a temporary directory, and the crash test runs real processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from scratch_files import KIND, ScratchFiles

from agent.reconcile import ApplyError, Desired, Engine, Key, MaintenanceReconciler, Outcome, Work
from agent.store import FILENAME, Put, Status, Store
from andromede.v1 import node_pb2

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """Ensures anything of its kind (failing the ids in `failing`), prunes the ids in
    `on_host` that are not desired; logs every step into a shared list so tests can check the
    order."""

    def __init__(self, kind: str, log: list[tuple[str, str]] | None = None) -> None:
        self.kind = kind
        self.kinds = (kind,)
        self.log = log if log is not None else []
        self.failing: dict[str, Exception] = {}
        self.on_host: set[str] = set()
        self.ensured: list[dict[str, bytes]] = []

    def ensure(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        self.log.append(("ensure", self.kind))
        mine = desired[self.kind]
        self.ensured.append({id: o.spec for id, o in mine.items()})
        outcomes = {}
        for id in mine:
            if not work.due(self.kind, id):
                continue
            if id in self.failing:
                outcomes[(self.kind, id)] = Outcome.failed(self.failing[id])
            else:
                self.on_host.add(id)
                outcomes[(self.kind, id)] = Outcome(f"applied {id}")
        return outcomes

    def prune(self, desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        self.log.append(("prune", self.kind))
        outcomes = {}
        for id in sorted(self.on_host - set(desired[self.kind])):
            if id in self.failing:
                outcomes[(self.kind, id)] = Outcome.failed(self.failing[id])
            else:
                self.on_host.discard(id)
                outcomes[(self.kind, id)] = Outcome("removed")
        return outcomes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.sqlite3") as s:
        yield s


_requests = iter(range(1, 1_000_000))


def put(store: Store, kind: str, id: str, spec: bytes) -> int:
    return store.put(kind, id, spec, f"r{next(_requests)}").generation


def delete(store: Store, kind: str, id: str) -> int:
    return store.delete(kind, id, f"r{next(_requests)}").generation


# --- passes and acks -------------------------------------------------------------------------


def test_a_pass_applies_everything_then_acks_the_generation(store: Store) -> None:
    put(store, "port", "p1", b"one")
    put(store, "port", "p2", b"two")
    last = put(store, "network", "n1", b"net")
    networks, ports = Recorder("network"), Recorder("port")
    engine = Engine(store, [networks, ports], jitter=0)
    assert not engine.first_pass_done.is_set()

    summary = engine.run_pass()

    assert (summary.applied, summary.failed, summary.acked, summary.generation) == (3, 0, True, last)
    assert engine.first_pass_done.is_set()
    assert ports.ensured == [{"p1": b"one", "p2": b"two"}]
    for kind, id in [("port", "p1"), ("port", "p2"), ("network", "n1")]:
        obj = store.get(kind, id)
        assert (obj.status, obj.message, obj.applied_generation) == (
            Status.APPLIED, f"applied {id}", obj.generation
        )
    assert store.applied_generation() == last


def test_a_pass_records_every_status_and_the_ack_in_one_transaction(store: Store) -> None:
    store.commit([Put("port", f"p{i}", b"x") for i in range(1000)], "batch")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)  # white-box: the store's one connection
    assert Engine(store, [Recorder("port")]).run_pass().acked
    assert statements.count("BEGIN IMMEDIATE") == 1  # one write transaction: one WAL fsync
    assert {o.status for o in store.objects("port")} == {Status.APPLIED}


def test_an_unchanged_pass_writes_nothing(store: Store) -> None:
    put(store, "port", "p1", b"one")
    engine = Engine(store, [Recorder("port")])
    engine.run_pass()
    cursor = store.last_cursor()
    engine.run_pass()
    assert store.last_cursor() == cursor, "a pass that found nothing new appended events"


def test_ensure_runs_in_order_and_prune_in_reverse(store: Store) -> None:
    log: list[tuple[str, str]] = []
    Engine(store, [Recorder("network", log), Recorder("port", log)]).run_pass()
    assert log == [("ensure", "network"), ("ensure", "port"), ("prune", "port"),
                   ("prune", "network")]  # fmt: skip


def test_a_deletion_is_found_on_the_host_and_only_then_acked(store: Store) -> None:
    ports = Recorder("port")
    engine = Engine(store, [ports])
    put(store, "port", "p1", b"one")
    engine.run_pass()
    # A fresh engine (as after a restart) has no memory of p1: it learns of it from the host.
    gone = delete(store, "port", "p1")
    ports.failing["p1"] = ApplyError("ovs: bridge br-int is busy")
    fresh = Engine(store, [ports], jitter=0)
    assert not fresh.run_pass().acked
    assert store.applied_generation() < gone
    assert "p1" in ports.on_host

    del ports.failing["p1"]
    summary = fresh.run_pass()
    assert (summary.pruned, summary.acked) == (1, True)
    assert "p1" not in ports.on_host
    assert store.applied_generation() == gone


def test_a_failure_is_durable_with_its_code_attempts_and_since(store: Store) -> None:
    clock = FakeClock()
    put(store, "port", "ok", b"fine")
    generation = put(store, "port", "bad", b"broken")
    ports = Recorder("port")
    ports.failing["bad"] = ApplyError("no such tap", grpc.StatusCode.FAILED_PRECONDITION)
    engine = Engine(store, [ports], clock=clock, jitter=0, backoff_base=1.0, backoff_max=8.0)

    summary = engine.run_pass()
    assert (summary.applied, summary.failed, summary.acked) == (1, 1, False)
    bad = store.get("port", "bad")
    assert (bad.status, bad.code, bad.message, bad.attempts) == (
        Status.FAILED, grpc.StatusCode.FAILED_PRECONDITION.value[0], "no such tap", 1
    )
    assert bad.since > 0
    assert store.applied_generation() == 0  # one failing object holds the whole host back
    [event] = [e for e in store.events_since(0) if e.id == "bad" and e.type == "status"]
    assert (event.status, event.code) == ("failed", grpc.StatusCode.FAILED_PRECONDITION.value[0])

    # Not due yet: the next pass does not try it, and the ack stays held.
    assert engine.next_retry() == clock.now + 1.0
    engine.run_pass()
    assert ports.ensured[-1].keys() == {"ok", "bad"}
    assert store.get("port", "bad").attempts == 1
    # Due: tried again, failed again, the delay doubles.
    clock.now += 1.0
    engine.run_pass()
    assert store.get("port", "bad").attempts == 2
    assert engine.next_retry() == clock.now + 2.0
    # Fixed: applied, attempts back to 0, the ack reaches the newest generation.
    del ports.failing["bad"]
    clock.now += 2.0
    assert engine.run_pass().acked
    bad = store.get("port", "bad")
    assert (bad.status, bad.code, bad.attempts, bad.applied_generation) == (
        Status.APPLIED, 0, 0, generation
    )
    assert store.applied_generation() == generation


def test_a_new_spec_is_tried_at_once_despite_the_backoff(store: Store) -> None:
    clock = FakeClock()
    put(store, "port", "p1", b"bad")
    ports = Recorder("port")
    ports.failing["p1"] = RuntimeError("bug")
    engine = Engine(store, [ports], clock=clock, jitter=0, backoff_base=30.0)
    engine.run_pass()
    assert store.get("port", "p1").code == grpc.StatusCode.INTERNAL.value[0]
    del ports.failing["p1"]
    put(store, "port", "p1", b"good")
    assert engine.run_pass().acked


def test_a_long_outage_keeps_retrying_at_the_cap(store: Store) -> None:
    clock = FakeClock()
    put(store, "port", "p1", b"x")
    ports = Recorder("port")
    ports.failing["p1"] = ApplyError("ovs down")
    engine = Engine(store, [ports], clock=clock, jitter=0, backoff_base=0.5, backoff_max=60.0)
    engine.run_pass()
    for _ in range(199):
        clock.now = engine.next_retry()
        engine.run_pass()
    assert engine.next_retry() - clock.now == 60.0
    assert store.get("port", "p1").attempts == 200


def test_a_reconciler_that_raises_fails_its_objects_not_the_engine(store: Store) -> None:
    put(store, "port", "p1", b"x")

    class Broken(Recorder):
        def ensure(self, desired, work):
            raise OSError("netlink socket closed")

    summary = Engine(store, [Broken("port")]).run_pass()
    assert (summary.failed, summary.acked) == (1, False)
    assert store.get("port", "p1").code == grpc.StatusCode.UNAVAILABLE.value[0]


def test_objects_of_a_kind_nobody_reconciles_are_failed_and_hold_the_ack(store: Store) -> None:
    put(store, "port", "p1", b"x")
    put(store, "vm", "v1", b"y")
    engine = Engine(store, [Recorder("port")])
    assert not engine.run_pass().acked
    vm = store.get("vm", "v1")
    assert (vm.status, vm.code) == (Status.FAILED, grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert "no reconciler for kind 'vm'" in vm.message
    engine.run_pass()
    assert store.get("vm", "v1").attempts == 1  # reported once, not counted as retries
    gone = delete(store, "vm", "v1")
    assert engine.run_pass().acked
    assert store.applied_generation() == gone


def test_a_reconciler_of_several_kinds_sees_them_all_in_one_call(store: Store) -> None:
    put(store, "network", "n1", b"net")
    put(store, "port", "p1", b"port")
    seen = []

    class Host:
        kinds = ("network", "port")

        def ensure(self, desired, work):
            seen.append({k: sorted(v) for k, v in desired.items()})
            return {(k, id): Outcome("compiled") for k, v in desired.items() for id in v}

        def prune(self, desired, work):
            return {}

    engine = Engine(store, [Host()])
    assert engine.kinds == {"network", "port"}
    assert engine.run_pass().acked
    assert seen == [{"network": ["n1"], "port": ["p1"]}]
    assert store.get("port", "p1").message == "compiled"


def test_a_pending_object_is_reported_and_holds_the_ack_without_backoff(store: Store) -> None:
    put(store, "port", "p1", b"x")

    class Waiting(Recorder):
        def ensure(self, desired, work):
            return {("port", "p1"): Outcome.waiting("waiting for the tap of vm-1")}

    engine = Engine(store, [Waiting("port")])
    summary = engine.run_pass()
    assert (summary.waiting, summary.failed, summary.acked) == (1, 0, False)
    p1 = store.get("port", "p1")
    assert (p1.status, p1.message, p1.attempts) == (Status.PENDING, "waiting for the tap of vm-1", 0)
    assert engine.next_retry() is None


def test_a_kick_from_a_driver_runs_a_pass_soon(store: Store) -> None:
    engine = Engine(store, [Recorder("port")], resync_interval=3600)
    thread, stop = run_loop(engine)
    try:
        assert engine.first_pass_done.wait(5)
        first = engine.last_pass
        engine.kick()
        wait_until(lambda: engine.last_pass is not first, timeout=5)
    finally:
        stop.set()
        thread.join(10)


def test_two_reconcilers_for_one_kind_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="one reconciler per kind"):
        Engine(store, [Recorder("port"), Recorder("port")])


def test_maintenance_reconciler_follows_the_stored_mode(store: Store) -> None:
    maintenance = MaintenanceReconciler()
    engine = Engine(store, [maintenance])
    spec = node_pb2.Maintenance(enabled=True, reason="kernel").SerializeToString()
    put(store, "node", "maintenance", spec)
    engine.run_pass()
    assert maintenance.enabled
    assert store.get("node", "maintenance").message == "maintenance on"
    delete(store, "node", "maintenance")
    assert engine.run_pass().acked
    assert not maintenance.enabled


# --- the loop --------------------------------------------------------------------------------


def run_loop(engine: Engine, progress=None) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=engine.run_forever, args=(stop, progress), daemon=True)
    thread.start()
    return thread, stop


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_put_after_start_is_applied_by_the_loop_and_a_batch_is_one_pass(
    store: Store, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    engine = Engine(store, [ScratchFiles(scratch)])
    passes = []
    thread, stop = run_loop(engine, lambda: passes.append(engine.last_pass))
    try:
        assert engine.first_pass_done.wait(5)
        answer = store.commit([Put(KIND, f"f{i}", b"x") for i in range(100)], "batch-1")
        wait_until(lambda: store.applied_generation() == answer.generation)
        assert sorted(p.name for p in scratch.iterdir()) == sorted(f"f{i}" for i in range(100))
        applied_in = {id(p) for p in passes if p is not None and p.applied}
        assert len(applied_in) <= 2, "a 100-object batch took more than one pass after start"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_drift_behind_the_agents_back_is_repaired_by_the_periodic_pass(
    store: Store, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    put(store, KIND, "motd", b"hello")
    engine = Engine(store, [ScratchFiles(scratch)], resync_interval=0.3)
    thread, stop = run_loop(engine)
    try:
        wait_until(lambda: (scratch / "motd").exists())
        (scratch / "motd").write_bytes(b"changed by hand")
        (scratch / "stray").write_bytes(b"nobody asked for this")
        wait_until(lambda: (scratch / "motd").read_bytes() == b"hello"
                   and not (scratch / "stray").exists())  # fmt: skip
        (scratch / "motd").unlink()
        wait_until(lambda: (scratch / "motd").exists())
    finally:
        stop.set()
        thread.join(10)


def test_a_stuck_reconciler_stops_the_progress_pings(store: Store) -> None:
    release = threading.Event()

    class Stuck(Recorder):
        def ensure(self, desired, work):
            if "hang" in desired["port"]:
                release.wait(30)  # a driver call that never returns (until the test ends)
            return super().ensure(desired, work)

    pings: list[float] = []
    engine = Engine(store, [Stuck("port")])
    thread, stop = run_loop(engine, lambda: pings.append(time.monotonic()))
    try:
        assert engine.first_pass_done.wait(5)
        wait_until(lambda: len(pings) > 3)  # idle: the loop keeps pinging
        put(store, "port", "hang", b"x")
        time.sleep(1.0)
        stuck_since = pings[-1]
        time.sleep(1.0)
        assert pings[-1] == stuck_since, "progress was reported while a driver call hung"
    finally:
        release.set()
        stop.set()
        thread.join(10)
    assert pings[-1] > stuck_since  # released: pinging again


# --- crash: delete, kill -9 before the reconciler runs, restart --------------------------------


def host(state: Path, scratch: Path, *ops: str, env: dict[str, str] | None = None
         ) -> subprocess.Popen:  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "tests.scratch_files", str(state), str(scratch), *ops],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def applied_generation(state: Path) -> int:
    with closing(sqlite3.connect(f"file:{state / FILENAME}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'applied_generation'").fetchone()
    return int(row[0])


@pytest.mark.integration
def test_a_deletion_accepted_before_kill_9_is_carried_out_after_restart(tmp_path: Path) -> None:
    state, scratch = tmp_path / "state", tmp_path / "scratch"
    state.mkdir()
    scratch.mkdir()
    first = host(state, scratch, "put", "f1", "hello", "put", "f2", "keep")
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 0 and "ACKED 2" in out, out
    assert (scratch / "f1").read_text() == "hello"

    held = host(state, scratch, "delete", "f1", "hold")
    try:
        assert held.stdout.readline() == "COMMITTED 3\n"
        assert held.stdout.readline() == "HELD\n"
        os.kill(held.pid, signal.SIGKILL)
        assert held.wait(30) == -signal.SIGKILL
    finally:
        if held.poll() is None:
            os.kill(held.pid, signal.SIGKILL)
        held.stdout.close()
    assert (scratch / "f1").exists(), "nothing may have removed it yet"
    assert applied_generation(state) == 2

    # The restarted host finds f1 on disk but not desired, removes it, and only then acks 3.
    restarted = host(state, scratch, env={"SCRATCH_PRUNE_DELAY_S": "0.5"})
    try:
        while restarted.poll() is None:
            # The ack first, then the file: once removed, f1 never comes back.
            if applied_generation(state) >= 3:
                assert not (scratch / "f1").exists(), "3 was acked while f1 was on the host"
            time.sleep(0.01)
        out = restarted.stdout.read()
    finally:
        if restarted.poll() is None:
            os.kill(restarted.pid, signal.SIGKILL)
        restarted.stdout.close()
    assert restarted.returncode == 0 and "ACKED 3" in out, out
    assert not (scratch / "f1").exists()
    assert (scratch / "f2").read_text() == "keep"
    assert applied_generation(state) == 3


def test_a_removal_under_way_holds_the_ack_without_a_failure_or_a_backoff(store: Store) -> None:
    """A prune that is PENDING (a VM's guest shutting down) is no failure: nothing is retried
    with backoff, and the ack waits until the removal is done."""
    put(store, "vm", "v1", b"vm")
    vms = Recorder("vm")
    engine = Engine(store, [vms], jitter=0)
    engine.run_pass()
    last = delete(store, "vm", "v1")
    shutting_down = {"v1"}

    def prune(desired: Desired, work: Work) -> Mapping[Key, Outcome]:
        if shutting_down:
            return {("vm", "v1"): Outcome.waiting("waiting for the guest to power off")}
        vms.on_host.discard("v1")
        return {("vm", "v1"): Outcome("removed")}

    vms.prune = prune
    waiting = engine.run_pass()
    assert (waiting.failed, waiting.waiting, waiting.acked) == (0, 1, False)
    assert engine.next_retry() is None  # no backoff: the reconciler kicks a pass itself
    assert store.applied_generation() < last
    shutting_down.clear()
    done = engine.run_pass()
    assert (done.pruned, done.acked) == (1, True) and store.applied_generation() == last
