"""The reconciler framework against a real Store: what the daemon and the drivers rely on.

The reconcilers here are recording doubles (this is the unit test of agent/reconcile.py); the
store is the real SQLite one in a temporary directory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.reconcile import Engine, MaintenanceReconciler
from agent.store import Status, Store
from andromede.v1 import node_pb2


class Recorder:
    """Applies anything, remembers every call; fails while `fail_with` is set."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls: list[tuple[str, str, bytes | None]] = []
        self.fail_with: str | None = None
        self.applied = threading.Event()

    def apply(self, kind: str, id: str, spec: bytes | None) -> str:
        self.calls.append((kind, id, spec))
        if self.fail_with is not None:
            raise RuntimeError(self.fail_with)
        self.applied.set()
        return f"applied {id}"


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


def test_resync_applies_everything_then_acks_the_generation(store: Store) -> None:
    put(store, "port", "p1", b"one")
    put(store, "port", "p2", b"two")
    last = put(store, "network", "n1", b"net")
    ports, networks = Recorder("port"), Recorder("network")
    engine = Engine(store, [ports, networks], jitter=0)

    engine.resync()
    assert not engine.first_pass_done.is_set()
    assert engine.run_pending() == 3

    assert engine.first_pass_done.is_set()
    assert sorted(ports.calls) == [("port", "p1", b"one"), ("port", "p2", b"two")]
    assert networks.calls == [("network", "n1", b"net")]
    for kind, id in [("port", "p1"), ("port", "p2"), ("network", "n1")]:
        obj = store.get(kind, id)
        assert obj is not None
        assert (obj.status, obj.message) == (Status.APPLIED, f"applied {id}")
        assert obj.applied_generation == obj.generation
    assert store.applied_generation() == last
    assert engine.run_pending() == 0  # nothing left to do


def test_empty_store_still_finishes_the_first_pass(store: Store) -> None:
    engine = Engine(store, [Recorder("port")])
    engine.resync()
    assert engine.run_pending() == 0
    assert engine.first_pass_done.is_set()


def test_a_put_after_start_is_applied_by_the_loop(store: Store) -> None:
    ports = Recorder("port")
    engine = Engine(store, [ports])
    stop = threading.Event()
    passes = []
    loop = threading.Thread(
        target=engine.run_forever, args=(stop, lambda: passes.append(1)), kwargs={"idle_wait": 5.0}
    )
    loop.start()
    try:
        assert engine.first_pass_done.wait(5)
        generation = put(store, "port", "p1", b"spec")
        assert ports.applied.wait(5), "the loop did not wake up for the new object"
        deadline = time.monotonic() + 5
        while store.applied_generation() < generation and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.applied_generation() == generation
        assert store.get("port", "p1").status is Status.APPLIED
    finally:
        stop.set()
        loop.join(10)
    assert not loop.is_alive()
    assert passes, "on_pass (the watchdog ping) was never called"
    assert ports.calls == [("port", "p1", b"spec")]


def test_failures_are_recorded_and_retried_with_growing_delays(store: Store) -> None:
    put(store, "port", "ok", b"fine")
    generation = put(store, "port", "bad", b"broken")
    clock = FakeClock()
    ports = Recorder("port")
    engine = Engine(store, [ports], backoff_base=1.0, backoff_max=4.0, clock=clock, jitter=0)

    ports.fail_with = "ovs: no such bridge br-int"
    engine.resync()
    engine.run_pending()
    assert engine.first_pass_done.is_set()  # a recorded failure counts as done for the first pass
    assert store.get("port", "bad").status is Status.FAILED
    assert store.get("port", "bad").message == "ovs: no such bridge br-int"
    assert store.applied_generation() == 0  # held back by the failures

    # Retries come after 1, 2, 4, 4 seconds (doubling, capped at backoff_max).
    ports.calls.clear()
    for delay in [1.0, 2.0, 4.0, 4.0]:
        clock.now += delay - 0.01
        assert engine.run_pending() == 0, f"retried before {delay} s"
        clock.now += 0.01
        assert engine.run_pending() == 2
    assert len(ports.calls) == 8

    ports.fail_with = "ovs: timeout"  # a new message is recorded
    clock.now += 4.0
    engine.run_pending()
    assert store.get("port", "bad").message == "ovs: timeout"

    ports.fail_with = None
    clock.now += 4.0
    assert engine.run_pending() == 2
    bad = store.get("port", "bad")
    assert (bad.status, bad.message, bad.applied_generation) == (
        Status.APPLIED,
        "applied bad",
        generation,
    )
    assert store.applied_generation() == generation
    assert engine.next_due() is None


def test_applied_generation_does_not_pass_a_failing_object(store: Store) -> None:
    clock = FakeClock()
    ports, networks = Recorder("port"), Recorder("network")
    engine = Engine(store, [ports, networks], clock=clock, jitter=0)
    first = put(store, "port", "p1", b"one")
    engine.resync()
    engine.run_pending()
    assert store.applied_generation() == first

    networks.fail_with = "vni taken"
    put(store, "network", "n1", b"net")
    put(store, "port", "p2", b"two")
    engine.poll_events()  # what run_forever does after each wait
    engine.run_pending()
    assert store.get("port", "p2").status is Status.APPLIED
    assert store.get("network", "n1").status is Status.FAILED
    assert store.applied_generation() == first


def test_deleted_objects_are_applied_with_spec_none(store: Store) -> None:
    put(store, "port", "p1", b"one")
    ports = Recorder("port")
    engine = Engine(store, [ports])
    engine.resync()
    engine.run_pending()

    gone = delete(store, "port", "p1")
    engine.poll_events()
    assert engine.run_pending() == 1
    assert ports.calls[-1] == ("port", "p1", None)
    assert store.get("port", "p1") is None
    assert store.applied_generation() == gone


def test_a_failing_delete_is_retried_and_holds_back_the_ack(store: Store) -> None:
    clock = FakeClock()
    put(store, "port", "p1", b"one")
    ports = Recorder("port")
    engine = Engine(store, [ports], clock=clock, backoff_base=1.0, jitter=0)
    engine.resync()
    engine.run_pending()
    applied = store.applied_generation()

    ports.fail_with = "device busy"
    gone = delete(store, "port", "p1")
    engine.poll_events()
    engine.run_pending()
    assert store.applied_generation() == applied
    ports.fail_with = None
    clock.now += 1.0
    assert engine.run_pending() == 1
    assert ports.calls[-1] == ("port", "p1", None)
    assert store.applied_generation() == gone


def test_repeated_puts_are_applied_once_with_the_newest_spec(store: Store) -> None:
    ports = Recorder("port")
    engine = Engine(store, [ports])
    engine.resync()
    engine.run_pending()

    for i in range(5):
        last = put(store, "port", "p1", f"spec {i}".encode())
    engine.poll_events()
    assert engine.run_pending() == 1
    assert ports.calls == [("port", "p1", b"spec 4")]
    assert store.get("port", "p1").applied_generation == last
    assert store.applied_generation() == last
    engine.poll_events()  # our own STATUS and NODE_APPLIED events are not work
    assert engine.run_pending() == 0


def test_a_change_read_before_its_event_is_not_applied_twice(store: Store) -> None:
    ports = Recorder("port")
    put(store, "port", "p1", b"one")
    engine = Engine(store, [ports])
    engine.resync()
    put(store, "port", "p1", b"two")  # lands before the item runs: the item reads it
    engine.run_pending()
    engine.poll_events()
    assert engine.run_pending() == 0
    assert ports.calls == [("port", "p1", b"two")]


def test_kinds_without_a_reconciler_are_left_alone(store: Store) -> None:
    put(store, "vm", "v1", b"vm")
    last = put(store, "port", "p1", b"one")
    ports = Recorder("port")
    engine = Engine(store, [ports])
    engine.resync()
    assert engine.run_pending() == 1
    assert store.get("vm", "v1").status is Status.PENDING  # nobody claims it
    assert store.applied_generation() == last  # and it does not hold the host back

    later = put(store, "vm", "v2", b"vm")
    engine.poll_events()
    assert engine.run_pending() == 0
    assert store.applied_generation() == later
    assert ports.calls == [("port", "p1", b"one")]


def test_an_expired_cursor_resyncs_and_catches_deletions(tmp_path: Path) -> None:
    with Store(tmp_path / "state.sqlite3", event_retention=2) as store:
        put(store, "port", "p1", b"one")
        put(store, "port", "p2", b"two")
        ports = Recorder("port")
        engine = Engine(store, [ports])
        engine.resync()
        engine.run_pending()
        for i in range(4):  # more changes than the store keeps events for
            put(store, "port", "p1", f"one {i}".encode())
        delete(store, "port", "p2")
        engine.poll_events()
        engine.run_pending()
        assert sorted(ports.calls[2:]) == [("port", "p1", b"one 3"), ("port", "p2", None)]
        assert store.applied_generation() == store.generation()


def test_maintenance_reconciler_follows_the_stored_mode(store: Store) -> None:
    node = MaintenanceReconciler()
    engine = Engine(store, [node])
    on = node_pb2.Maintenance(enabled=True, reason="disk").SerializeToString()
    put(store, "node", "maintenance", on)
    engine.resync()
    engine.run_pending()
    assert node.enabled
    assert store.get("node", "maintenance").message == "maintenance on"

    put(store, "node", "maintenance", node_pb2.Maintenance(enabled=False).SerializeToString())
    engine.poll_events()
    engine.run_pending()
    assert not node.enabled
    assert store.get("node", "maintenance").message == "maintenance off"
    assert node.apply("node", "maintenance", None) == "maintenance off"


def test_two_reconcilers_for_one_kind_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="port"):
        Engine(store, [Recorder("port"), Recorder("port")])


def test_a_newer_spec_that_fails_the_same_way_is_recorded_as_failed(store: Store) -> None:
    clock = FakeClock()
    ports = Recorder("port")
    ports.fail_with = "no bridge"
    put(store, "port", "p1", b"one")
    engine = Engine(store, [ports], clock=clock, jitter=0)
    engine.resync()
    engine.run_pending()
    newer = put(store, "port", "p1", b"two")
    clock.now += 1.0  # the retry reads the newer spec before its event is polled
    engine.run_pending()
    p1 = store.get("port", "p1")
    assert (p1.generation, p1.status, p1.message) == (newer, Status.FAILED, "no bridge")
    assert ports.calls[-1] == ("port", "p1", b"two")


def test_a_long_outage_keeps_retrying_at_the_cap(store: Store) -> None:
    clock = FakeClock()
    ports = Recorder("port")
    ports.fail_with = "down"
    put(store, "port", "p1", b"one")
    engine = Engine(store, [ports], clock=clock, backoff_base=0.5, backoff_max=60.0, jitter=0)
    engine.resync()
    for _ in range(1_100):  # past 2**1024, where an uncapped exponent overflows a float
        engine.run_pending()
        clock.now += 60.0
    assert len(ports.calls) == 1_100
    assert engine.next_due() == clock.now
