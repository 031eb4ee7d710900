"""The desired-state store keeps what it acknowledged, answers replays as the first time, and
changes nothing on bad input: real SQLite files in tmp_path, a real child process killed with
SIGKILL for the crash test, real threads for concurrency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import shutil
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from agent import store as store_module
from agent.store import (
    LATEST,
    MIGRATIONS,
    Accepted,
    BatchRejected,
    CursorExpired,
    DeadlineExceeded,
    Delete,
    EventType,
    Invalid,
    Migration,
    NotFound,
    Precondition,
    Put,
    Ref,
    Report,
    RequestConflict,
    Result,
    SchemaTooNew,
    Status,
    StorageFull,
    StorageUnavailable,
    Store,
    StoreError,
    Unique,
    deadline_scope,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / store_module.FILENAME


@pytest.fixture
def store(db_path: Path):
    with Store(db_path) as s:
        yield s


def dump(path: Path) -> list[str]:
    """Everything in the database, as SQL text, read through a connection of its own."""
    with closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


# --- the basics ----------------------------------------------------------------------------


def test_put_get_list_delete_and_one_generation_per_change(store: Store) -> None:
    assert store.generation() == 0
    assert store.put("network", "net-a", b"vni: 100", "r1") == Accepted(1, replayed=False)
    assert store.put("port", "p1", b"mac: 1", "r2") == Accepted(2, replayed=False)
    assert store.put("port", "p0", b"mac: 0", "r3") == Accepted(3, replayed=False)
    assert store.put("port", "p1", b"mac: 11", "r4") == Accepted(4, replayed=False)

    p1 = store.get("port", "p1")
    assert p1 is not None
    assert (p1.spec, p1.generation, p1.status, p1.applied_generation) == (
        b"mac: 11",
        4,
        Status.PENDING,
        0,
    )
    assert store.get("port", "nope") is None
    assert store.get("vm", "p1") is None  # objects are per kind
    assert [o.id for o in store.objects("port")] == ["p0", "p1"]
    assert [o.id for o in store.objects("network")] == ["net-a"]
    assert store.objects("vm") == []

    assert store.delete("port", "p0", "r5") == Accepted(5, replayed=False)
    assert store.get("port", "p0") is None
    assert [o.id for o in store.objects("port")] == ["p1"]
    assert store.generation() == 5


def test_putting_the_same_spec_again_takes_no_generation(store: Store) -> None:
    store.put("port", "p1", b"spec", "r1")
    store.put("port", "p2", b"other", "r2")
    events = store.events_since(0)

    # A new request for a state that is already desired: accepted at the object's generation.
    assert store.put("port", "p1", b"spec", "r3") == Accepted(1, replayed=False)
    assert store.generation() == 2
    assert store.events_since(0) == events
    # ...and that answer is what a replay of r3 gets.
    assert store.put("port", "p1", b"spec", "r3") == Accepted(1, replayed=True)


def test_a_replayed_request_returns_the_first_answer_and_changes_nothing(
    store: Store, db_path: Path
) -> None:
    first = store.put("port", "p1", b"v1", "req-1")
    store.put("port", "p1", b"v2", "req-2")  # the object moves on
    store.put("port", "p9", b"x", "req-3")
    deleted = store.delete("port", "p9", "req-4")
    before = dump(db_path)

    assert store.put("port", "p1", b"v1", "req-1") == Accepted(first.generation, replayed=True)
    assert store.delete("port", "p9", "req-4") == Accepted(deleted.generation, replayed=True)

    assert dump(db_path) == before  # v2 is still desired, p9 still gone, nothing appended
    assert store.get("port", "p1").spec == b"v2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "second",
    [
        lambda s: s.put("port", "p1", b"v2", "req-1"),  # other spec
        lambda s: s.put("port", "p2", b"v1", "req-1"),  # other id
        lambda s: s.put("vm", "p1", b"v1", "req-1"),  # other kind
        lambda s: s.delete("port", "p1", "req-1"),  # other operation
    ],
    ids=["spec", "id", "kind", "operation"],
)
def test_a_request_id_reused_for_another_request_is_refused_and_changes_nothing(
    store: Store, db_path: Path, second
) -> None:
    store.put("port", "p1", b"v1", "req-1")
    before = dump(db_path)
    with pytest.raises(RequestConflict) as err:
        second(store)
    assert err.value.field == "request_id"
    assert str(err.value).startswith("request_id: 'req-1' was already used")
    assert "generation 1" in str(err.value)
    assert dump(db_path) == before


@pytest.mark.parametrize(
    ("kind", "id", "spec", "request_id", "field"),
    [
        ("", "p1", b"x", "r", "kind"),
        ("Port", "p1", b"x", "r", "kind"),
        ("port;drop", "p1", b"x", "r", "kind"),
        ("k" * 33, "p1", b"x", "r", "kind"),
        (None, "p1", b"x", "r", "kind"),
        ("port", "", b"x", "r", "id"),
        ("port", "a b", b"x", "r", "id"),
        ("port", "-p1", b"x", "r", "id"),
        ("port", "p1\n", b"x", "r", "id"),
        ("port", "é", b"x", "r", "id"),
        ("port", "p" * 129, b"x", "r", "id"),
        ("port", 7, b"x", "r", "id"),
        ("port", "p1", "text, not bytes", "r", "spec"),
        ("port", "p1", b"x" * (store_module.MAX_SPEC_BYTES + 1), "r", "spec"),
        ("port", "p1", b"x", "", "request_id"),
        ("port", "p1", b"x", "r" * 129, "request_id"),
        ("port", "p1", b"x", None, "request_id"),
    ],
)
def test_bad_arguments_name_the_field_and_change_nothing(
    store: Store, db_path: Path, kind, id, spec, request_id, field
) -> None:
    store.put("port", "p1", b"good", "r0")
    before = dump(db_path)
    with pytest.raises(Invalid) as err:
        store.put(kind, id, spec, request_id)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    if spec == b"x":  # delete checks the same fields, except the spec it has not got
        with pytest.raises(Invalid) as err:
            store.delete(kind, id, request_id)
        assert err.value.field == field
    assert dump(db_path) == before
    assert store.generation() == 1


def test_the_longest_allowed_names_are_accepted(store: Store) -> None:
    kind, id, request_id = "k" * 32, "p" * 128, "r" * 128
    assert store.put(kind, id, b"", request_id) == Accepted(1, replayed=False)
    assert store.get(kind, id).spec == b""  # type: ignore[union-attr]


def test_deleting_a_missing_object_is_not_found_and_changes_nothing(
    store: Store, db_path: Path
) -> None:
    store.put("port", "p1", b"x", "r1")
    before = dump(db_path)
    with pytest.raises(NotFound) as err:
        store.delete("port", "p2", "r2")
    assert str(err.value) == "id: no port with id 'p2'"
    assert dump(db_path) == before
    # The failed request was not remembered: the same request_id can be used once p2 exists.
    store.put("port", "p2", b"y", "r3")
    assert store.delete("port", "p2", "r2") == Accepted(3, replayed=False)


# --- durability ----------------------------------------------------------------------------

# The child: opens the store, puts until killed, and prints each acknowledged generation.
CHILD = r"""
import sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from agent.store import Store

path, prefix = sys.argv[1], sys.argv[2]
store = Store(path)
for i in range(1_000_000):
    name = f"{prefix}-{i}"
    answer = store.put("port", name, f"spec of {name}".encode() * 20, f"req-{name}")
    print(f"ACK {answer.generation} {name}", flush=True)
print("DONE", flush=True)
"""


def run_child_and_kill_it(db_path: Path, prefix: str, acks: int) -> list[tuple[int, str]]:
    """Start the child, SIGKILL it by pid after `acks` acknowledgements, and return every
    (generation, id) it acknowledged, including those printed between the decision to kill
    and the kill."""
    log_path = db_path.parent / f"child-{prefix}.log"
    with open(log_path, "w") as child_log:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db_path), prefix],
            stdout=subprocess.PIPE,
            stderr=child_log,
            text=True,
            cwd=REPO,
        )
    try:
        lines = []
        while len(lines) < acks:
            line = child.stdout.readline()
            assert line, f"the child stopped before the kill: {log_path.read_text()[-2000:]}"
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
        lines += child.stdout.readlines()
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        child.stdout.close()
    assert "DONE\n" not in lines, "the child finished before it was killed"
    answers = []
    for line in lines:
        tag, generation, name = line.split()
        assert tag == "ACK"
        answers.append((int(generation), name))
    return answers


@pytest.mark.integration
def test_acknowledged_puts_survive_kill_9(db_path: Path) -> None:
    acknowledged: list[tuple[int, str]] = []
    for round, acks_before_kill in enumerate([20, 45, 90]):
        acks = run_child_and_kill_it(db_path, f"round{round}", acks_before_kill)
        assert len(acks) >= acks_before_kill
        first = acknowledged[-1][0] + 1 if acknowledged else 1
        # The crash may have committed one more put that was never acknowledged; the next
        # child then starts after it.
        assert acks[0][0] in (first, first + 1)
        assert [g for g, _ in acks] == list(range(acks[0][0], acks[0][0] + len(acks)))
        acknowledged += acks

        with closing(sqlite3.connect(db_path)) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        with Store(db_path) as store:
            last = acknowledged[-1][0]
            assert store.generation() in (last, last + 1)  # at most the unacknowledged one more
            for generation, name in acknowledged:
                obj = store.get("port", name)
                assert obj is not None, f"acknowledged {name} at generation {generation} was lost"
                assert obj.generation == generation
                assert obj.spec == f"spec of {name}".encode() * 20
            # Replays of acknowledged requests are answered as the first time, after the crash.
            for generation, name in acknowledged[:: len(acknowledged) // 5]:
                spec = f"spec of {name}".encode() * 20
                assert store.put("port", name, spec, f"req-{name}") == Accepted(generation, True)
            assert store.generation() in (last, last + 1)


def test_the_database_is_in_wal_mode_with_full_sync(store: Store, db_path: Path) -> None:
    store.put("port", "p1", b"x", "r1")
    # synchronous is a setting of each connection: read the store's own (2 is FULL).
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # type: ignore[union-attr]
    with closing(sqlite3.connect(db_path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert Path(f"{db_path}-wal").exists()


def test_replays_are_still_idempotent_after_reopening(db_path: Path) -> None:
    with Store(db_path) as s:
        first = s.put("port", "p1", b"v1", "req-1")
        s.put("port", "p1", b"v2", "req-2")
        s.put("vm", "vm1", b"vm", "req-3")
        deleted = s.delete("vm", "vm1", "req-4")
    before = dump(db_path)
    with Store(db_path) as s:
        assert s.put("port", "p1", b"v1", "req-1") == Accepted(first.generation, replayed=True)
        assert s.delete("vm", "vm1", "req-4") == Accepted(deleted.generation, replayed=True)
        with pytest.raises(RequestConflict):
            s.put("port", "p1", b"v3", "req-2")
        assert s.get("port", "p1").spec == b"v2"  # type: ignore[union-attr]
    assert dump(db_path) == before


# --- events --------------------------------------------------------------------------------


def test_every_change_appends_an_event_with_a_rising_cursor(store: Store) -> None:
    store.put("port", "p1", b"v1", "r1")
    store.put("port", "p1", b"v2", "r2")
    store.record([Report("port", "p1", 2, Status.FAILED, "tap device busy", 14)])
    store.record([Report("port", "p1", 2, Status.APPLIED)])
    store.delete("port", "p1", "r3")
    store.record([], applied_generation=3)
    events = store.events_since(0)
    seen = [
        (e.cursor, e.kind, e.id, e.generation, e.type, e.status, e.message, e.code)
        for e in events
    ]
    assert seen == [
        (1, "port", "p1", 1, EventType.CREATED, "pending", "", 0),
        (2, "port", "p1", 2, EventType.UPDATED, "pending", "", 0),
        (3, "port", "p1", 2, EventType.STATUS, "failed", "tap device busy", 14),
        (4, "port", "p1", 2, EventType.STATUS, "applied", "", 0),
        (5, "port", "p1", 3, EventType.DELETED, "", "", 0),
        (6, "", "", 3, EventType.NODE_APPLIED, "applied", "", 0),
    ]
    assert all(e.at > 0 for e in events)
    assert store.last_cursor() == 6
    assert [e.cursor for e in store.events_since(2, limit=2)] == [3, 4]
    assert store.events_since(6) == []


def test_events_resume_from_a_cursor_after_reopening(db_path: Path) -> None:
    with Store(db_path) as s:
        for i in range(5):
            s.put("port", f"p{i}", b"x", f"r{i}")
        seen = s.events_since(0, limit=3)
    cursor = seen[-1].cursor
    with Store(db_path) as s:
        s.put("port", "p9", b"x", "r9")
        rest = s.events_since(cursor)
    assert [e.id for e in seen + rest] == ["p0", "p1", "p2", "p3", "p4", "p9"]
    assert [e.cursor for e in seen + rest] == [1, 2, 3, 4, 5, 6]


def test_a_cursor_older_than_retention_must_resync(db_path: Path) -> None:
    with Store(db_path, event_retention=10) as s:
        for i in range(30):
            s.put("port", f"p{i}", b"x", f"r{i}")
        assert len(s.events_since(20)) == 10  # the last 10 are kept...
        with pytest.raises(CursorExpired) as err:  # ...and what came before them is gone
            s.events_since(19)
        assert str(err.value).startswith("cursor: 19 is too old")
        assert "resync" in str(err.value)
        with pytest.raises(CursorExpired):
            s.events_since(0)
        # The resync: a snapshot, then events from its cursor, misses nothing.
        snap = s.snapshot()
        s.put("port", "late", b"x", "r-late")
        assert [e.id for e in s.events_since(snap.cursor)] == ["late"]
    with Store(db_path, event_retention=10) as s:  # still so after reopening
        with pytest.raises(CursorExpired):
            s.events_since(5)


def test_a_cursor_beyond_the_newest_event_must_resync(store: Store) -> None:
    store.put("port", "p1", b"x", "r1")
    with pytest.raises(CursorExpired) as err:
        store.events_since(2)
    assert "beyond the newest event 1" in str(err.value)
    with pytest.raises(Invalid) as bad:
        store.events_since(-1)
    assert bad.value.field == "cursor"
    with pytest.raises(Invalid) as bad:
        store.events_since(0, limit=0)
    assert bad.value.field == "limit"


def test_a_watcher_wakes_up_when_an_event_is_committed(store: Store) -> None:
    assert store.wait_for_event(0, timeout=0.01) is False
    woke: list[bool] = []
    watcher = threading.Thread(target=lambda: woke.append(store.wait_for_event(0, timeout=30)))
    watcher.start()
    store.put("port", "p1", b"x", "r1")
    watcher.join(timeout=30)
    assert woke == [True]
    assert store.wait_for_event(0, timeout=0) is True
    assert store.wait_for_event(1, timeout=0.01) is False


# --- status and snapshots ------------------------------------------------------------------


def test_status_reports_follow_the_objects_generation(store: Store) -> None:
    store.put("port", "p1", b"v1", "r1")
    store.record([Report("port", "p1", 1, Status.APPLIED)])
    p1 = store.get("port", "p1")
    assert (p1.status, p1.applied_generation) == (Status.APPLIED, 1)  # type: ignore[union-attr]

    store.put("port", "p1", b"v2", "r2")  # a new spec is pending again; what was applied stays
    p1 = store.get("port", "p1")
    assert p1 is not None
    assert (p1.generation, p1.status, p1.applied_generation) == (2, Status.PENDING, 1)

    # A report about the old spec is stale: the status stays pending.
    cursor = store.last_cursor()
    store.record([Report("port", "p1", 1, Status.FAILED, "old failure", 14)])
    assert store.get("port", "p1").status is Status.PENDING  # type: ignore[union-attr]
    assert store.events_since(cursor) == []

    # The same failure reported again and again appends one event.
    store.record([Report("port", "p1", 2, Status.FAILED, "x" * 5000, 14)])
    store.record([Report("port", "p1", 2, Status.FAILED, "x" * 5000, 14)])
    p1 = store.get("port", "p1")
    assert p1.status is Status.FAILED  # type: ignore[union-attr]
    assert (p1.code, p1.attempts) == (14, 2)  # type: ignore[union-attr]
    assert len(p1.message) == store_module.MAX_MESSAGE_CHARS  # type: ignore[union-attr]
    assert len(store.events_since(cursor)) == 1
    assert store.generation() == 2  # status is not desired state: no generations taken

    with pytest.raises(Invalid) as err:
        store.record([Report("port", "p1", 3, Status.APPLIED)])
    assert err.value.field == "generation"
    with pytest.raises(Invalid) as err:
        store.record([Report("port", "p1", 2, "done")])  # type: ignore[arg-type]
    assert err.value.field == "status"
    with pytest.raises(Invalid) as err:
        store.record([Report("port", "p1", 2, Status.FAILED, "x", 99)])
    assert err.value.field == "code"
    store.delete("port", "p1", "r3")
    assert store.record([Report("port", "p1", 2, Status.APPLIED)]) == 0  # gone: ignored


def test_the_hosts_applied_generation_only_moves_forward(store: Store) -> None:
    store.put("port", "p1", b"x", "r1")
    store.put("port", "p2", b"x", "r2")
    store.record([], applied_generation=2)
    store.record([], applied_generation=1)  # late report: ignored
    assert store.applied_generation() == 2
    with pytest.raises(Invalid) as err:
        store.record([], applied_generation=3)
    assert err.value.field == "applied_generation"
    assert store.snapshot().applied_generation == 2


def test_a_snapshot_is_everything_at_one_generation(store: Store) -> None:
    store.put("network", "n1", b"net", "r1")
    store.put("port", "p1", b"p1", "r2")
    store.put("port", "p2", b"p2", "r3")
    store.delete("port", "p1", "r4")
    snap = store.snapshot()
    assert (snap.generation, snap.cursor) == (4, 4)
    assert snap.store_id == store.store_id() and len(snap.store_id) == 32
    assert sorted(snap.objects) == ["network", "port"]
    assert list(snap.of("port")) == ["p2"]
    assert snap.of("port")["p2"].spec == b"p2"
    assert snap.of("vm") == {}
    store.put("port", "p3", b"p3", "r5")
    assert "p3" not in snap.of("port")  # a snapshot does not change afterwards
    with pytest.raises(TypeError):
        snap.objects["port"]["p9"] = snap.of("port")["p2"]  # type: ignore[index]


# --- request id window ---------------------------------------------------------------------


def test_request_ids_are_forgotten_after_the_window(db_path: Path) -> None:
    now = [1_000_000.0]
    with Store(db_path, request_window_s=3600, clock=lambda: now[0]) as s:
        s.put("port", "p1", b"v1", "old")
        now[0] += 1800
        assert s.put("port", "p1", b"v1", "old").replayed  # within the hour: a replay
    now[0] += 3600
    with Store(db_path, request_window_s=3600, clock=lambda: now[0]) as s:
        # Forgotten: treated as a new request, which for a put of the same spec changes nothing.
        assert s.put("port", "p1", b"v1", "old") == Accepted(1, replayed=False)
        assert s.generation() == 1


def test_only_the_last_request_ids_are_kept(db_path: Path) -> None:
    with Store(db_path, request_window_count=10) as s:
        for i in range(25):
            s.put("port", f"p{i}", b"x", f"r{i}")
        assert s.put("port", "p24", b"x", "r24").replayed
        assert s.put("port", "p15", b"x", "r15").replayed
        # r0 is long forgotten, so it may name a new request.
        assert s.put("port", "other", b"x", "r0") == Accepted(26, replayed=False)


def test_large_first_answers_are_kept_within_a_byte_budget(db_path: Path) -> None:
    # Each 100-object batch keeps about 2.6 KB of results; the budget holds about four.
    with Store(db_path, request_window_bytes=10_000) as s:
        for i in range(20):
            s.commit([Put("port", f"b{i}-p{j:03d}", b"x") for j in range(100)], f"batch-{i}")
        with closing(sqlite3.connect(db_path)) as raw:
            kept = [r[0] for r in raw.execute("SELECT request_id FROM requests ORDER BY seq")]
            size = raw.execute(
                "SELECT sum(length(results) + coalesce(length(reply), 0)) FROM requests"
            ).fetchone()[0]
        assert kept[-1] == "batch-19" and "batch-0" not in kept
        assert size <= 10_000 + 10_000 // 10 + 2_700  # the budget, and what came since a trim
        assert s.commit([Put("port", f"b19-p{j:03d}", b"x") for j in range(100)],
                        "batch-19").replayed  # fmt: skip


# --- schema --------------------------------------------------------------------------------


def test_migrations_are_numbered_one_to_latest() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


def test_an_empty_database_at_version_0_is_migrated(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as raw:
        raw.execute("VACUUM")  # a valid, empty SQLite file
    assert db_path.stat().st_size > 0 and user_version(db_path) == 0
    with Store(db_path) as s:
        assert s.put("port", "p1", b"x", "r1") == Accepted(1, replayed=False)
    assert user_version(db_path) == LATEST


def test_a_database_from_a_newer_agent_is_refused(db_path: Path) -> None:
    with Store(db_path) as s:
        s.put("port", "p1", b"x", "r1")
    with closing(sqlite3.connect(db_path)) as raw:
        raw.execute(f"PRAGMA user_version = {LATEST + 1}")
    before = dump(db_path)
    with pytest.raises(SchemaTooNew) as err:
        Store(db_path)
    assert f"has schema version {LATEST + 1}, but this agent knows versions up to {LATEST}" in str(
        err.value
    )
    assert str(db_path) in str(err.value)
    assert dump(db_path) == before and user_version(db_path) == LATEST + 1


def test_a_failing_migration_changes_nothing(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as raw:
        raw.execute("CREATE TABLE events (x)")  # in the way of migration 1
    with pytest.raises(StoreError) as err:
        Store(db_path)
    assert "table events already exists" in str(err.value)
    with closing(sqlite3.connect(db_path)) as raw:
        names = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert names == [("events",)] and user_version(db_path) == 0


def test_a_new_migration_upgrades_an_existing_store_and_keeps_its_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db_path) as s:
        s.put("port", "p1", b"x", "r1")
    extra = Migration(LATEST + 1, "a test column", ("ALTER TABLE objects ADD COLUMN note TEXT",))
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, extra))
    monkeypatch.setattr(store_module, "LATEST", LATEST + 1)
    with Store(db_path) as s:
        assert s.get("port", "p1").spec == b"x"  # type: ignore[union-attr]
        assert s.put("port", "p1", b"x", "r1").replayed
    assert user_version(db_path) == LATEST + 1
    with closing(sqlite3.connect(db_path)) as raw:
        assert "note" in [c[1] for c in raw.execute("PRAGMA table_info(objects)")]


def test_a_file_that_is_not_a_database_is_a_clear_error(db_path: Path) -> None:
    db_path.write_bytes(b"not a database, " * 100)
    with pytest.raises(StoreError) as err:
        Store(db_path)
    assert str(db_path) in str(err.value) and "not a database" in str(err.value)


def test_a_missing_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "missing" / store_module.FILENAME)
    assert f"directory {tmp_path / 'missing'} does not exist" in str(err.value)


def test_a_closed_store_refuses_calls(db_path: Path) -> None:
    s = Store(db_path)
    s.close()
    s.close()  # twice is fine
    with pytest.raises(StoreError, match="is closed"):
        s.put("port", "p1", b"x", "r1")
    with pytest.raises(StoreError, match="is closed"):
        s.generation()


# --- threads -------------------------------------------------------------------------------


def test_concurrent_puts_get_distinct_gap_free_generations(store: Store) -> None:
    threads, per_thread = 8, 40
    start = threading.Barrier(threads)
    answers: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                name = f"t{t}-{i}"
                answers[name] = store.put("port", name, name.encode(), f"req-{name}").generation
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    total = threads * per_thread
    assert sorted(answers.values()) == list(range(1, total + 1))
    assert store.generation() == total
    for name, generation in answers.items():
        assert store.get("port", name).generation == generation  # type: ignore[union-attr]
    events = store.events_since(0, limit=total)
    assert [e.cursor for e in events] == list(range(1, total + 1))
    assert [e.generation for e in events] == list(range(1, total + 1))  # commit order


def test_concurrent_replays_of_one_request_change_the_store_once(store: Store) -> None:
    threads = 8
    start = threading.Barrier(threads)
    answers: list[Accepted] = []

    def work() -> None:
        start.wait()
        answers.append(store.put("port", "p1", b"x", "same-request"))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert {a.generation for a in answers} == {1}
    assert sorted(a.replayed for a in answers) == [False] + [True] * (threads - 1)
    assert store.generation() == 1 and len(store.events_since(0)) == 1


# --- batches, references and first answers (migration 2) -------------------------------------


def commits_during(store: Store):
    """A list that collects every statement the store's connection runs (white-box: the store
    has one connection, in autocommit mode, and writes only in BEGIN IMMEDIATE transactions, so
    each BEGIN IMMEDIATE is one write transaction, and one WAL fsync at its COMMIT)."""
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)  # type: ignore[union-attr]
    return statements


def test_a_1000_object_batch_is_one_transaction(store: Store) -> None:
    statements = commits_during(store)
    answer = store.commit([Put("port", f"p{i}", b"spec %d" % i) for i in range(1000)], "batch-1")
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    assert [r.generation for r in answer.results] == list(range(1, 1001))
    assert answer.generation == 1000 and not answer.replayed
    assert len(store.objects("port")) == 1000


def test_a_batch_with_bad_objects_stores_nothing_and_names_every_one(store: Store) -> None:
    store.put("port", "keep", b"x", "r0")
    cursor, generation = store.last_cursor(), store.generation()
    changes: list[Put | Delete] = [Put("port", f"p{i}", b"ok") for i in range(1000)]
    changes[500] = Put("port", "bad id!", b"x")
    changes[700] = Delete("vm", "absent")
    changes[900] = Put("port", "p1", b"twice")
    with pytest.raises(BatchRejected) as err:
        store.commit(changes, "batch-1")
    # The id and duplicate checks come before the transaction; the missing object inside it
    # only once the rest is clean, so the first rejection names those two.
    assert [(i, type(e).__name__, e.field) for i, _, e in err.value.faults] == [
        (500, "Invalid", "id"), (900, "Invalid", "id")
    ]
    assert str(err.value).startswith("changes[500].id: must be")
    changes[500] = Put("port", "p500", b"ok")
    changes[900] = Put("port", "p900", b"ok")
    with pytest.raises(BatchRejected) as err:
        store.commit(changes, "batch-1")
    assert [(i, id, type(e).__name__) for i, id, e in err.value.faults] == [
        (700, "absent", "NotFound")
    ]
    assert (store.last_cursor(), store.generation()) == (cursor, generation)
    assert [o.id for o in store.objects("port")] == ["keep"]
    # Nothing was remembered: the same request_id, fixed, goes through.
    changes[700] = Delete("vm", "absent", allow_missing=True)
    answer = store.commit(changes, "batch-1")
    assert answer.results[700] == Result("absent", 0, changed=False)
    assert len(store.objects("port")) == 1000  # "keep" and 999 new ones


def test_references_are_checked_inside_the_transaction(store: Store) -> None:
    net = Ref("network_id", "network", "n1")
    with pytest.raises(BatchRejected) as err:
        store.commit([Put("port", "p1", b"x", (net,))], "r1")
    [(index, id, error)] = err.value.faults
    assert (index, id, type(error), error.field) == (0, "p1", Precondition, "network_id")
    assert "network 'n1' does not exist" in str(error)
    # A network and its port in one batch, in either order.
    store.commit([Put("port", "p1", b"x", (net,)), Put("network", "n1", b"n")], "r2")
    with pytest.raises(BatchRejected) as err:
        store.commit([Delete("network", "n1")], "r3")
    assert "still used by port 'p1'" in str(err.value.faults[0][2])
    assert store.get("network", "n1") is not None
    # A port that stops referring to the network releases it.
    store.commit([Put("port", "p1", b"y"), Delete("network", "n1")], "r4")
    assert store.get("network", "n1") is None


def network(id: str, vni: int) -> Put:
    return Put("network", id, b"vni %d" % vni, unique=(Unique("vni", "network.vni", str(vni)),))


def nic(kind: str, id: str, mac: str) -> Put:
    """A port or an L2 entry: their MACs share one scope per network."""
    return Put(kind, id, mac.encode(), unique=(Unique("mac", "mac@n1", mac),))


def faults_of(error: pytest.ExceptionInfo[BatchRejected]) -> list[tuple[int, str, str, str]]:
    return [(i, id, type(e).__name__, str(e)) for i, id, e in error.value.faults]


def test_a_value_held_by_a_stored_object_is_a_conflict_naming_it(
    store: Store, db_path: Path
) -> None:
    store.commit([network("n1", 100)], "r1")
    before = dump(db_path)
    with pytest.raises(BatchRejected) as err:
        store.commit([network("n2", 101), network("n3", 100)], "r2")
    [(index, id, kind, message)] = faults_of(err)
    assert (index, id, kind) == (1, "n3", "Conflict")
    assert message.startswith("vni: 100 is already used by network 'n1'; choose another")
    assert str(err.value).startswith("changes[1].vni: 100 is already used by network 'n1'")
    assert dump(db_path) == before  # n2 was rolled back with the rest


def test_two_objects_of_one_batch_cannot_take_the_same_value(store: Store) -> None:
    """Across kinds too: ports and L2 entries share their network's MACs."""
    with pytest.raises(BatchRejected) as err:
        store.commit([nic("port", "p1", "fa:16:3e:00:00:01"),
                      nic("l2_entry", "e1", "fa:16:3e:00:00:01")], "r1")  # fmt: skip
    assert [(i, kind, message.split(";")[0]) for i, _, kind, message in faults_of(err)] == [
        (0, "Conflict", "mac: fa:16:3e:00:00:01 is already used by l2_entry 'e1'"),
        (1, "Conflict", "mac: fa:16:3e:00:00:01 is already used by port 'p1'"),
    ]
    assert store.objects("port") == [] and store.objects("l2_entry") == []


def test_one_batch_may_swap_two_values(store: Store) -> None:
    store.commit([nic("port", "p1", "fa:16:3e:00:00:01"),
                  nic("port", "p2", "fa:16:3e:00:00:02")], "r1")  # fmt: skip
    store.commit([nic("port", "p1", "fa:16:3e:00:00:02"),
                  nic("port", "p2", "fa:16:3e:00:00:01")], "r2")  # fmt: skip
    assert [o.spec for o in store.objects("port")] == [b"fa:16:3e:00:00:02", b"fa:16:3e:00:00:01"]
    # And the swapped values are held: a third port can take neither.
    with pytest.raises(BatchRejected) as err:
        store.commit([nic("port", "p3", "fa:16:3e:00:00:01")], "r3")
    assert "already used by port 'p2'" in faults_of(err)[0][3]


def test_a_delete_frees_the_value(store: Store) -> None:
    store.commit([network("n1", 100)], "r1")
    with pytest.raises(BatchRejected):
        store.commit([network("n2", 100)], "r2")
    store.commit([Delete("network", "n1")], "r3")
    assert store.commit([network("n2", 100)], "r4").results[0].changed
    # In one batch as well, in either order.
    store.commit([network("n3", 100), Delete("network", "n2")], "r5")
    assert [o.id for o in store.objects("network")] == ["n3"]


def test_replacing_an_object_keeps_or_moves_its_own_value(store: Store) -> None:
    store.commit([network("n1", 100)], "r1")
    replaced = Put("network", "n1", b"vni 100, mtu 9000", unique=network("n1", 100).unique)
    assert store.commit([replaced], "r2").results[0].changed
    store.commit([network("n1", 200)], "r3")  # moves n1 to 200, which frees 100
    store.commit([network("n2", 100)], "r4")
    with pytest.raises(BatchRejected) as err:
        store.commit([network("n3", 200)], "r5")
    assert "already used by network 'n1'" in faults_of(err)[0][3]


def test_a_missing_object_of_a_batch_is_named_by_its_position(store: Store) -> None:
    with pytest.raises(BatchRejected) as err:
        store.commit([Delete("network", "n9")], "r1")
    [(_, _, error)] = err.value.faults
    assert (type(error), error.field) == (NotFound, "")
    assert str(err.value) == "changes[0]: no network with id 'n9'"
    assert str(BatchRejected(err.value.faults, items="ids")) == "ids[0]: no network with id 'n9'"


def test_a_replay_returns_the_first_answer_byte_for_byte(db_path: Path) -> None:
    def reply(results: tuple[Result, ...]) -> bytes:
        return repr(results).encode() + b" at " + repr(store.generation()).encode()

    with Store(db_path) as store:
        first = store.commit([Put("port", "p1", b"v1"), Put("port", "p2", b"v1")], "req-1",
                             reply=reply)  # fmt: skip
        store.commit([Put("port", "p1", b"v2"), Delete("port", "p2")], "req-2")
        again = store.commit([Put("port", "p1", b"v1"), Put("port", "p2", b"v1")], "req-1",
                             reply=reply)  # fmt: skip
        assert again.replayed and again.reply == first.reply and again.results == first.results
    with Store(db_path) as store:  # and after a restart
        again = store.commit([Put("port", "p1", b"v1"), Put("port", "p2", b"v1")], "req-1")
        assert again.reply == first.reply
        assert store.get("port", "p1").spec == b"v2"  # type: ignore[union-attr]


def test_objects_remember_when_and_by_which_request_they_changed(db_path: Path) -> None:
    now = [1_800_000_000.0]
    with Store(db_path, clock=lambda: now[0]) as store:
        store.put("port", "p1", b"v1", "req-1")
        now[0] += 10
        store.put("port", "p1", b"v2", "req-2")
        now[0] += 10
        store.put("port", "p1", b"v2", "req-3")  # unchanged: not an update
        p1 = store.get("port", "p1")
        assert (p1.created_at, p1.updated_at, p1.request_id, p1.since) == (
            1_800_000_000.0, 1_800_000_010.0, "req-2", 1_800_000_010.0
        )
        now[0] += 5
        store.record([Report("port", "p1", 2, Status.APPLIED, "bound")])
        assert store.get("port", "p1").since == 1_800_000_025.0  # type: ignore[union-attr]


def test_a_schema_1_database_is_upgraded_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "desired-state.sqlite3"
    shutil.copy(REPO / "tests" / "data" / "store-schema1.sqlite3", path)
    assert user_version(path) == 1
    # The file's requests date from 1_780_000_000: open it "shortly after", inside their window.
    with Store(path, clock=lambda: 1_780_000_100.0) as store:
        assert user_version(path) == LATEST
        snap = store.snapshot()
        assert (snap.generation, snap.applied_generation) == (5, 2)
        assert {k: sorted(v) for k, v in snap.objects.items()} == {
            "network": ["n1"], "node": ["maintenance"], "port": ["p1"]
        }
        p1 = snap.of("port")["p1"]
        assert (p1.spec, p1.status, p1.message, p1.applied_generation) == (
            b"port-one", Status.APPLIED, "bound", 2
        )
        assert (p1.request_id, p1.updated_at, p1.created_at) == (
            "req-p1", 1_780_000_000.0, 1_780_000_000.0
        )
        # Requests remembered by schema 1 still replay, with their first generation.
        assert store.put("port", "p1", b"port-one", "req-p1") == Accepted(2, replayed=True)
        assert store.delete("port", "p2", "req-del-p2") == Accepted(5, replayed=True)
        with pytest.raises(RequestConflict):
            store.put("port", "p1", b"other", "req-p1")
        assert [e.cursor for e in store.events_since(0)] == list(range(1, 9))
        assert store.put("port", "p9", b"new", "req-new").generation == 6
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs of the test's own, unmounted afterwards even on failure."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", f"andromede-test-{os.getpid()}",
                    str(mount)], check=True)  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.integration
def test_a_full_disk_is_storage_full_and_leaves_the_database_intact(small_disk: Path) -> None:
    path = small_disk / "desired-state.sqlite3"
    with Store(path) as store:
        store.put("port", "before", b"x" * 1000, "r0")
        with pytest.raises(StorageFull) as err:
            for i in range(1, 1000):
                store.commit([Put("port", f"p{i}-{j}", os.urandom(4000)) for j in range(8)],
                             f"r{i}")  # fmt: skip
        assert "is full" in str(err.value) and "free space" in str(err.value)
        generation = store.generation()
        assert store.get("port", "before") is not None
    with Store(path) as store:  # reopens on the full disk: nothing half-written
        assert store.generation() == generation
        assert len(store.objects("port")) == generation  # every acknowledged put, no other
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_caller_deadline_bounds_the_wait_for_the_store(store: Store) -> None:
    inside, release = threading.Event(), threading.Event()

    def slow_reply(results: tuple[Result, ...]) -> bytes:  # runs inside the transaction
        inside.set()
        release.wait(10)
        return b""

    writer = threading.Thread(target=lambda: store.commit([Put("port", "p1", b"x")], "r1",
                                                          reply=slow_reply))  # fmt: skip
    writer.start()
    try:
        assert inside.wait(5)
        with deadline_scope(0.2), pytest.raises(DeadlineExceeded):
            store.get("port", "p1")
    finally:
        release.set()
        writer.join(10)
    with deadline_scope(0.2):
        assert store.get("port", "p1") is not None


def test_a_database_locked_by_another_process_is_storage_unavailable(db_path: Path) -> None:
    with Store(db_path) as store:
        store.put("port", "p1", b"x", "r1")
        with closing(sqlite3.connect(db_path, isolation_level=None)) as intruder:
            intruder.execute("BEGIN EXCLUSIVE")  # what a stray sqlite3 shell could do
            with pytest.raises(StorageUnavailable) as err:
                store.put("port", "p2", b"y", "r2")  # after SQLite's 5 s busy wait
            assert "locked by another process" in str(err.value)
            intruder.execute("ROLLBACK")
        assert store.put("port", "p2", b"y", "r2").generation == 2
