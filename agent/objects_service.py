"""Put, Delete, Get and List for any kind of stored object: one implementation, and a small
`Kind` description per kind (the six of the Network service, and the Compute service's VMs).

Where data comes from and where it goes (API -> store -> reconciler -> drivers):

- Put<Kinds>: every object is checked by its kind's `check` (the domain types, agent/network/
  specs.py for networks) and the ids must be distinct; any fault fails the whole call with
  every faulty object listed (`BatchRejected`: the edge puts ObjectErrors in the trailer).
  Then one `Store.commit` of the serialized messages, with the references and unique values
  the checks found, which the store enforces inside the same transaction. The answer is built
  from the stored results alone, so a replay of the request_id is byte for byte the first one.
- Delete<Kinds>: ids checked and distinct, then one commit (the store refuses a delete of an
  object still referred to, naming both).
- Get<Kind> and List<Kinds>: the stored message as `spec`, with the store's bookkeeping
  (`meta`) and the reconciler's findings (`status`). A List page is read from one snapshot,
  so its `cursor` is the event position of exactly those objects.

Nothing here calls a driver: a reconciler applies what was stored (style.md).

The message classes of each kind come from the service's descriptor, by the method names
network.proto uses (Put<plural>, Delete<plural>, Get<singular>, List<plural>), so a description
names a kind once and cannot disagree with the API.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

from agent.node_service import APPLY_STATES, encode_cursor
from agent.store import (
    MAX_BATCH,
    BatchRejected,
    Delete,
    Invalid,
    NotFound,
    Object,
    Put,
    Ref,
    Result,
    Store,
    StoreError,
    Unique,
    check_id,
)
from andromede.v1 import common_pb2

DEFAULT_PAGE_SIZE = 1_000
MAX_PAGE_SIZE = 10_000
_TOKEN = re.compile(r"v1:([0-9a-f]{1,64}):([a-z][a-z0-9_]{0,31}):(.+)", re.DOTALL)


class CheckResult(Protocol):
    """What a kind's check returns (unless it raises): what to store with the object."""

    @property
    def refs(self) -> tuple[Ref, ...]: ...

    @property
    def unique(self) -> tuple[Unique, ...]: ...


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind as an API serves it. `singular` and `plural` are the method suffixes
    (GetL2Entry, PutL2Entries); the store's kind is `singular` in snake case ("l2_entry"),
    and so is the Get response's field; the Put request's and List response's list is `plural`
    in snake case ("l2_entries"). `check` raises the store's Invalid or Precondition naming the
    field inside the object. `filters`: List request fields that, when set, keep only the
    objects whose spec has the same value in its field of the same name. `runtime`: for kinds
    whose record has a `runtime` (PortRecord), what the host has for each id now, read once per
    Get or List call. `companions`: kinds whose object of the same id is deleted with it, in
    the same commit, if there is one (a VM's pending reboot)."""

    singular: str
    plural: str
    check: Callable[[Any], CheckResult]
    filters: tuple[str, ...] = ()
    runtime: Callable[[], Mapping[str, Message]] | None = None
    companions: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return _snake(self.singular)

    @property
    def items(self) -> str:
        return _snake(self.plural)


def servicer(base: type, service: ServiceDescriptor, kinds: Sequence[Kind], store: Store,
             extra: Mapping[str, Callable[[Any], Message]] | None = None) -> Any:  # fmt: skip
    """An instance of the generated servicer class `base` that serves the four methods of each
    kind over `store`, and the `extra` methods (name -> request -> response) a service has
    besides; other methods of `service` keep `base`'s UNIMPLEMENTED."""
    attributes: dict[str, Callable] = {
        name: (lambda answer: lambda self, request, context: answer(request))(answer)
        for name, answer in (extra or {}).items()
    }
    for kind in kinds:
        api = _Api.of(service, kind)
        attributes[f"Put{kind.plural}"] = _method(_put, api, store)
        attributes[f"Delete{kind.plural}"] = _method(_delete, api, store)
        attributes[f"Get{kind.singular}"] = _method(_get, api, store)
        attributes[f"List{kind.plural}"] = _method(_list, api, store)
    return type(f"Objects{service.name}", (base,), attributes)()


def _method(serve: Callable[[_Api, Store, Any], Message], api: _Api, store: Store) -> Callable:
    def method(self: Any, request: Any, context: Any) -> Message:
        return serve(api, store, request)

    return method


# --- the four methods --------------------------------------------------------------------------


def _put(api: _Api, store: Store, request: Any) -> Message:
    check_id("request_id", request.request_id)
    kind, items = api.kind, getattr(request, api.kind.items)
    _check_batch(kind.items, len(items))
    changes: list[Put] = []
    faults: list[tuple[int, str, StoreError]] = []
    first_at: dict[str, int] = {}
    for i, message in enumerate(items):
        first = first_at.setdefault(message.id, i)
        try:
            checked = kind.check(message)
            if first != i:
                raise _duplicate("id", message.id, first, kind.items)
        except StoreError as e:
            faults.append((i, message.id, e))
            continue
        spec = message.SerializeToString(deterministic=True)
        changes.append(Put(kind.name, message.id, spec, checked.refs, checked.unique))
    if faults:
        raise BatchRejected(faults, kind.items)
    return _answer(api.put_response, _commit(store, changes, request.request_id, kind.items))


def _delete(api: _Api, store: Store, request: Any) -> Message:
    check_id("request_id", request.request_id)
    _check_batch("ids", len(request.ids))
    faults: list[tuple[int, str, StoreError]] = []
    first_at: dict[str, int] = {}
    for i, id in enumerate(request.ids):
        first = first_at.setdefault(id, i)
        try:
            check_id("", id)  # the item is the id itself: its faults name no field inside it
            if first != i:
                raise _duplicate("", id, first, "ids")
        except Invalid as e:
            faults.append((i, id, e))
    if faults:
        raise BatchRejected(faults, "ids")
    changes = [Delete(api.kind.name, id, request.allow_missing) for id in request.ids]
    companions = [Delete(kind, id, True) for id in request.ids for kind in api.kind.companions]
    results = _commit(store, changes + companions, request.request_id, "ids")
    return _answer(api.delete_response, results[: len(changes)])


def _get(api: _Api, store: Store, request: Any) -> Message:
    check_id("id", request.id)
    stored = store.get(api.kind.name, request.id)
    if stored is None:
        raise NotFound(api.kind.name, request.id)
    record = _record(api, stored, api.spec.FromString(stored.spec), _runtimes(api.kind))
    return api.get_response(**{api.kind.name: record})


def _list(api: _Api, store: Store, request: Any) -> Message:
    kind = api.kind
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    token = _read_token(request.page_token, kind.name)
    snapshot = store.snapshot()
    after = "" if token is None else token[1]
    if token is not None and token[0] != snapshot.store_id:
        raise Invalid("page_token", "comes from another store (this host's state directory was "
                      "wiped since): list again from the first page")  # fmt: skip
    wanted = [(name, getattr(request, name)) for name in kind.filters if getattr(request, name)]
    objects = snapshot.of(kind.name)
    ids = sorted(objects)
    records: list[Message] = []
    runtimes = _runtimes(kind)
    next_token, last = "", after
    for id in ids[bisect.bisect_right(ids, after):]:
        stored = objects[id]
        spec = api.spec.FromString(stored.spec)
        if any(getattr(spec, name) != value for name, value in wanted):
            continue
        if len(records) == size:  # one more match exists: this page is not the last
            next_token = _write_token(snapshot.store_id, kind.name, last)
            break
        records.append(_record(api, stored, spec, runtimes))
        last = id
    return api.list_response(
        **{kind.items: records},
        next_page_token=next_token,
        cursor=encode_cursor(snapshot.store_id, snapshot.cursor),
    )


# --- parts -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Api:
    """A kind with its message classes, found in the service's descriptor."""

    kind: Kind
    spec: type[Message]
    record: type[Message]
    put_response: type[Message]
    delete_response: type[Message]
    get_response: type[Message]
    list_response: type[Message]

    @classmethod
    def of(cls, service: ServiceDescriptor, kind: Kind) -> _Api:
        methods = service.methods_by_name
        put = methods[f"Put{kind.plural}"]
        get = methods[f"Get{kind.singular}"]
        listing = methods[f"List{kind.plural}"]
        spec = put.input_type.fields_by_name[kind.items].message_type
        for name in kind.filters:
            for message in (listing.input_type, spec):
                if name not in message.fields_by_name:
                    raise ValueError(f"filters: {message.full_name} has no field {name!r}")
        return cls(
            kind,
            spec=GetMessageClass(spec),
            record=GetMessageClass(get.output_type.fields_by_name[kind.name].message_type),
            put_response=GetMessageClass(put.output_type),
            delete_response=GetMessageClass(methods[f"Delete{kind.plural}"].output_type),
            get_response=GetMessageClass(get.output_type),
            list_response=GetMessageClass(listing.output_type),
        )


def _commit(
    store: Store, changes: Sequence[Put | Delete], request_id: str, items: str
) -> tuple[Result, ...]:
    try:
        return store.commit(changes, request_id).results
    except BatchRejected as e:
        raise BatchRejected(e.faults, items) from None  # named as the request names its list


def _answer(response: type[Message], results: tuple[Result, ...]) -> Message:
    """A Put or Delete response: a function of the stored results only, so a replay, which
    gets the same results from the store, is the same bytes."""
    return response(
        generation=max((r.generation for r in results), default=0),
        results=[common_pb2.ObjectResult(id=r.id, generation=r.generation, changed=r.changed)
                 for r in results],
    )  # fmt: skip


def _runtimes(kind: Kind) -> Mapping[str, Message]:
    return kind.runtime() if kind.runtime is not None else {}


def _record(api: _Api, stored: Object, spec: Message, runtimes: Mapping[str, Message]) -> Message:
    extra = {"runtime": runtimes[stored.id]} if stored.id in runtimes else {}
    return api.record(
        **extra,
        spec=spec,
        meta=common_pb2.ObjectMeta(
            generation=stored.generation,
            created_at=_time(stored.created_at),
            updated_at=_time(stored.updated_at),
            request_id=stored.request_id,
        ),
        status=common_pb2.ObjectStatus(
            state=APPLY_STATES[stored.status],
            applied_generation=stored.applied_generation,
            since=_time(stored.since),
            code=stored.code,
            message=stored.message,
            attempts=stored.attempts,
        ),
    )


def _check_batch(items: str, count: int) -> None:
    if not 1 <= count <= MAX_BATCH:
        raise Invalid(items, f"must hold 1..{MAX_BATCH:,} objects, got {count:,}")


def _duplicate(field: str, id: str, first: int, items: str) -> Invalid:
    return Invalid(field, f"{id!r} is also at {items}[{first}]: ids must be distinct")


def _write_token(store_id: str, kind: str, last_id: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{store_id}:{kind}:{last_id}".encode()).decode()


def _read_token(token: str, kind: str) -> tuple[str, str] | None:
    """(store id, the last id of the previous page) from a page token; None for the first
    page."""
    if not token:
        return None
    try:
        match = _TOKEN.fullmatch(base64.urlsafe_b64decode(token.encode()).decode())
    except (binascii.Error, UnicodeError, ValueError):
        match = None
    if match is None:
        raise Invalid("page_token", "malformed: pass the previous response's next_page_token "
                      "unchanged, or empty for the first page")  # fmt: skip
    if match.group(2) != kind:
        raise Invalid("page_token", f"comes from a listing of {match.group(2)}, not of {kind}: "
                      f"pass the next_page_token of the same List method")  # fmt: skip
    return match.group(1), match.group(3)


def _time(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _snake(name: str) -> str:
    """"L2Entries" -> "l2_entries", "SecurityGroup" -> "security_group"."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
