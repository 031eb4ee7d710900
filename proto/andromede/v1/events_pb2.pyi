import datetime

from andromede.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_CREATED: _ClassVar[EventType]
    EVENT_TYPE_UPDATED: _ClassVar[EventType]
    EVENT_TYPE_DELETED: _ClassVar[EventType]
    EVENT_TYPE_STATUS: _ClassVar[EventType]
    EVENT_TYPE_NODE_APPLIED: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_CREATED: EventType
EVENT_TYPE_UPDATED: EventType
EVENT_TYPE_DELETED: EventType
EVENT_TYPE_STATUS: EventType
EVENT_TYPE_NODE_APPLIED: EventType

class Event(_message.Message):
    __slots__ = ("type", "kind", "object_id", "generation", "state", "code", "message", "time", "sequence")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    kind: _common_pb2.ResourceKind
    object_id: str
    generation: int
    state: _common_pb2.ApplyState
    code: int
    message: str
    time: _timestamp_pb2.Timestamp
    sequence: int
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., kind: _Optional[_Union[_common_pb2.ResourceKind, str]] = ..., object_id: _Optional[str] = ..., generation: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.ApplyState, str]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("cursor", "kinds", "object_ids", "heartbeat_interval_s", "from_oldest")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    FROM_OLDEST_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    kinds: _containers.RepeatedScalarFieldContainer[_common_pb2.ResourceKind]
    object_ids: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_interval_s: int
    from_oldest: bool
    def __init__(self, cursor: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[_common_pb2.ResourceKind, str]]] = ..., object_ids: _Optional[_Iterable[str]] = ..., heartbeat_interval_s: _Optional[int] = ..., from_oldest: _Optional[bool] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("events", "cursor")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    cursor: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...
