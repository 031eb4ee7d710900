import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLY_STATE_UNSPECIFIED: _ClassVar[ApplyState]
    APPLY_STATE_PENDING: _ClassVar[ApplyState]
    APPLY_STATE_APPLIED: _ClassVar[ApplyState]
    APPLY_STATE_FAILED: _ClassVar[ApplyState]

class ResourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOURCE_KIND_UNSPECIFIED: _ClassVar[ResourceKind]
    RESOURCE_KIND_NODE: _ClassVar[ResourceKind]
    RESOURCE_KIND_VM: _ClassVar[ResourceKind]
    RESOURCE_KIND_NETWORK: _ClassVar[ResourceKind]
    RESOURCE_KIND_PORT: _ClassVar[ResourceKind]
    RESOURCE_KIND_SECURITY_GROUP: _ClassVar[ResourceKind]
    RESOURCE_KIND_TUNNEL_ENDPOINT: _ClassVar[ResourceKind]
    RESOURCE_KIND_L2_ENTRY: _ClassVar[ResourceKind]
    RESOURCE_KIND_RATE_LIMIT: _ClassVar[ResourceKind]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_INGRESS: _ClassVar[Direction]
    DIRECTION_EGRESS: _ClassVar[Direction]
APPLY_STATE_UNSPECIFIED: ApplyState
APPLY_STATE_PENDING: ApplyState
APPLY_STATE_APPLIED: ApplyState
APPLY_STATE_FAILED: ApplyState
RESOURCE_KIND_UNSPECIFIED: ResourceKind
RESOURCE_KIND_NODE: ResourceKind
RESOURCE_KIND_VM: ResourceKind
RESOURCE_KIND_NETWORK: ResourceKind
RESOURCE_KIND_PORT: ResourceKind
RESOURCE_KIND_SECURITY_GROUP: ResourceKind
RESOURCE_KIND_TUNNEL_ENDPOINT: ResourceKind
RESOURCE_KIND_L2_ENTRY: ResourceKind
RESOURCE_KIND_RATE_LIMIT: ResourceKind
DIRECTION_UNSPECIFIED: Direction
DIRECTION_INGRESS: Direction
DIRECTION_EGRESS: Direction

class Status(_message.Message):
    __slots__ = ("code", "message", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    details: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...

class ObjectError(_message.Message):
    __slots__ = ("index", "id", "code", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    code: int
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., code: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ObjectErrors(_message.Message):
    __slots__ = ("errors",)
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[ObjectError]
    def __init__(self, errors: _Optional[_Iterable[_Union[ObjectError, _Mapping]]] = ...) -> None: ...

class ObjectResult(_message.Message):
    __slots__ = ("id", "generation", "changed")
    ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    id: str
    generation: int
    changed: bool
    def __init__(self, id: _Optional[str] = ..., generation: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class ObjectMeta(_message.Message):
    __slots__ = ("generation", "created_at", "updated_at", "request_id")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    generation: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, generation: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ObjectStatus(_message.Message):
    __slots__ = ("state", "applied_generation", "since", "code", "message", "attempts")
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    state: ApplyState
    applied_generation: int
    since: _timestamp_pb2.Timestamp
    code: int
    message: str
    attempts: int
    def __init__(self, state: _Optional[_Union[ApplyState, str]] = ..., applied_generation: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...
