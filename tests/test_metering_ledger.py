"""The usage ledger's accounting (agent/metering/ledger.py) with a double of a source that
reports whatever the test sets, over a real store on disk: deltas counted once, resets and new
epochs, what the agent folds before it deletes, checkpoints that survive a crash."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.metering.ledger import Account, Counters, Ledger, Measure, Reading, Snapshot
from agent.store import FILENAME, Store
from dataplane.topology import Direction

IN, OUT = Direction.INGRESS, Direction.EGRESS


class Recorded:
    """A source whose counters and epoch the test sets; counts its reads."""

    def __init__(self, name: str = "double") -> None:
        self.name = name
        self.epoch = "e1"
        self.counters: dict[str, tuple[Account | None, int, int]] = {}
        self.reads = 0
        self.broken = False

    def set(self, key: str, tenant: str | None, direction: Direction, measure: Measure,
            packets: int, nbytes: int | None = None) -> None:  # fmt: skip
        account = Account(tenant, direction, measure) if tenant else None
        self.counters[key] = (account, packets, packets * 100 if nbytes is None else nbytes)

    def read(self) -> Snapshot:
        if self.broken:
            raise ConnectionError("the source is down")
        self.reads += 1
        return Snapshot(self.epoch, tuple(Reading(k, a, p, b) for k, (a, p, b) in self.counters.items()),
                        time.time())  # fmt: skip


class FailingSaves:
    """The store, but its next save raises (a crash between a read and its checkpoint)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fail = False

    def usage_checkpoint(self):
        return self.store.usage_checkpoint()

    def save_usage(self, **rows) -> None:
        if self.fail:
            raise OSError("killed before the checkpoint")
        self.store.save_usage(**rows)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / FILENAME) as s:
        yield s


def ledger_with(store, source: Recorded) -> Ledger:
    ledger = Ledger(store)
    ledger.attach(source)
    return ledger


def usage(ledger: Ledger, tenant: str = "t1") -> tuple[Counters, Counters]:
    [u] = ledger.usage([tenant])
    return u.ingress, u.egress


def started(store: Store) -> tuple[Recorded, Ledger]:
    """A source with one egress flow at 5 packets, already baselined (its first read)."""
    source = Recorded()
    source.set("f1", "t1", OUT, Measure.PASSED, 5)
    ledger = ledger_with(store, source)
    ledger.collect()
    return source, ledger


def test_the_first_read_of_a_source_is_a_baseline_and_counts_nothing(store: Store) -> None:
    source, ledger = started(store)
    assert usage(ledger) == (Counters(), Counters())
    source.set("f1", "t1", OUT, Measure.PASSED, 8)
    ledger.collect()
    assert usage(ledger)[1] == Counters(3, 300)


def test_each_packet_is_counted_once_across_reads(store: Store) -> None:
    source, ledger = started(store)
    for value in (6, 6, 9, 20):
        source.set("f1", "t1", OUT, Measure.PASSED, value)
        ledger.collect()
    source.set("f2", "t1", OUT, Measure.PASSED, 4)  # a new flow counts from zero
    ledger.collect()
    assert usage(ledger)[1] == Counters(19, 1900)
    assert ledger.lost_windows == 0


def test_a_counter_that_went_back_counts_what_it_has_and_reports_a_lost_window(store: Store) -> None:
    source, ledger = started(store)
    source.set("f1", "t1", OUT, Measure.PASSED, 2)  # reset by someone, then 2 packets
    ledger.collect()
    assert usage(ledger)[1] == Counters(2, 200)
    assert ledger.lost_windows == 1


def test_a_new_epoch_counts_every_counter_from_zero_and_reports_a_lost_window(store: Store) -> None:
    source, ledger = started(store)
    source.epoch = "e2"
    source.set("f1", "t1", OUT, Measure.PASSED, 7)  # above the old value, yet all new
    ledger.collect()
    assert usage(ledger)[1] == Counters(7, 700)
    assert ledger.lost_windows == 1
    assert store.usage_checkpoint().lost_windows == 1


def test_a_counter_forgotten_before_its_deletion_comes_back_counting_from_zero(store: Store) -> None:
    source, ledger = started(store)
    source.set("f1", "t1", OUT, Measure.PASSED, 9)
    with ledger.holding():  # what the reconciler's hook does around a change
        ledger.fold(source.name, source.read())
        del source.counters["f1"]  # the change: OVS deletes the flow...
        ledger.forget(source.name, ["f1"])
    source.set("f1", "t1", OUT, Measure.PASSED, 12)  # ...and a later pass adds it again
    ledger.collect()
    assert usage(ledger)[1] == Counters(4 + 12, 1600)
    assert ledger.lost_windows == 0


def test_a_counter_that_vanished_without_the_agent_is_a_lost_window(store: Store) -> None:
    source, ledger = started(store)
    del source.counters["f1"]
    ledger.collect()
    assert ledger.lost_windows == 1
    source.set("f1", "t1", OUT, Measure.PASSED, 3)
    ledger.collect()
    assert usage(ledger)[1] == Counters(3, 300)


def test_totals_and_last_values_survive_a_restart_and_count_nothing_twice(tmp_path: Path) -> None:
    with Store(tmp_path / FILENAME) as store:
        source, ledger = started(store)
        source.set("f1", "t1", OUT, Measure.PASSED, 10)
        ledger.collect()
        since = ledger.counting_since
    with Store(tmp_path / FILENAME) as store:  # the agent restarted; the counters did not
        ledger = ledger_with(store, source)
        assert usage(ledger)[1] == Counters(5, 500) and ledger.counting_since == since
        source.set("f1", "t1", OUT, Measure.PASSED, 11)
        ledger.collect()
        assert usage(ledger)[1] == Counters(6, 600)


def test_a_crash_between_a_read_and_its_checkpoint_loses_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / FILENAME) as store:
        saves = FailingSaves(store)
        source = Recorded()
        source.set("f1", "t1", OUT, Measure.PASSED, 5)
        ledger = ledger_with(saves, source)
        ledger.collect()
        source.set("f1", "t1", OUT, Measure.PASSED, 10)
        saves.fail = True
        with pytest.raises(OSError):
            ledger.fold(source.name, source.read())  # read, then killed before the checkpoint
        assert usage(ledger)[1] == Counters()  # nothing moved without its checkpoint
    with Store(tmp_path / FILENAME) as store:
        ledger = ledger_with(store, source)
        source.set("f1", "t1", OUT, Measure.PASSED, 12)
        ledger.collect()
        assert usage(ledger)[1] == Counters(7, 700)


def test_a_source_that_cannot_be_read_keeps_its_counts_and_collected_at(store: Store) -> None:
    source, ledger = started(store)
    read_at = ledger.collected_at()
    source.broken = True
    assert ledger.collect() == read_at
    source.broken = False
    source.set("f1", "t1", OUT, Measure.PASSED, 6)
    assert ledger.collect() > read_at and usage(ledger)[1] == Counters(1, 100)


def test_ingress_passed_is_offered_less_the_meters_drops_and_never_goes_down(store: Store) -> None:
    source = Recorded()
    source.set("deliver", "t1", IN, Measure.OFFERED, 0)
    source.set("meter", "t1", IN, Measure.OFFERED_DROPPED, 0)
    source.set("egress-meter", "t1", OUT, Measure.DROPPED, 0)
    ledger = ledger_with(store, source)
    ledger.collect()
    source.set("deliver", "t1", IN, Measure.OFFERED, 100)
    source.set("meter", "t1", IN, Measure.OFFERED_DROPPED, 30)
    source.set("egress-meter", "t1", OUT, Measure.DROPPED, 4)
    ledger.collect()
    assert usage(ledger) == (Counters(70, 7000, 30, 3000), Counters(0, 0, 4, 400))
    # The meter counts at once, the flow a moment later: the difference dips, the report not.
    source.set("meter", "t1", IN, Measure.OFFERED_DROPPED, 50)
    ledger.collect()
    assert usage(ledger)[0] == Counters(70, 7000, 50, 5000)
    source.set("deliver", "t1", IN, Measure.OFFERED, 140)
    ledger.collect()
    assert usage(ledger)[0] == Counters(90, 9000, 50, 5000)


def test_a_counter_whose_owner_the_source_forgot_stays_with_its_tenant(store: Store) -> None:
    source, ledger = started(store)
    source.set("f1", None, OUT, Measure.PASSED, 8)  # the tenant's tag was freed this pass
    ledger.collect()
    assert usage(ledger)[1] == Counters(3, 300)


def test_tenants_are_in_id_order_and_unknown_ones_are_zero(store: Store) -> None:
    source, ledger = started(store)
    source.set("f1", "t1", OUT, Measure.PASSED, 6)
    source.set("f0", "a0", OUT, Measure.PASSED, 1)
    ledger.collect()
    assert ledger.tenants() == {"t1", "a0"}
    assert [u.tenant_id for u in ledger.usage(["zz", "t1", "a0", "t1"])] == ["a0", "t1", "zz"]
    assert ledger.usage(["zz"])[0].egress == Counters()


def test_counting_since_is_made_with_the_state_and_new_with_new_state(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Store(tmp_path / "a" / FILENAME) as first:
        since = first.usage_checkpoint().counting_since
    with Store(tmp_path / "a" / FILENAME) as again:
        assert again.usage_checkpoint().counting_since == since
    with Store(tmp_path / "b" / FILENAME) as other:
        assert other.usage_checkpoint().counting_since > since
    assert json.dumps(since)  # a plain number of seconds
