import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetUsageRequest(_message.Message):
    __slots__ = ("tenant_ids",)
    TENANT_IDS_FIELD_NUMBER: _ClassVar[int]
    tenant_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: UsageReport
    def __init__(self, report: _Optional[_Union[UsageReport, _Mapping]] = ...) -> None: ...

class WatchUsageRequest(_message.Message):
    __slots__ = ("tenant_ids", "interval_s")
    TENANT_IDS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    tenant_ids: _containers.RepeatedScalarFieldContainer[str]
    interval_s: int
    def __init__(self, tenant_ids: _Optional[_Iterable[str]] = ..., interval_s: _Optional[int] = ...) -> None: ...

class WatchUsageResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: UsageReport
    def __init__(self, report: _Optional[_Union[UsageReport, _Mapping]] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("collected_at", "tenants")
    COLLECTED_AT_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    collected_at: _timestamp_pb2.Timestamp
    tenants: _containers.RepeatedCompositeFieldContainer[TenantUsage]
    def __init__(self, collected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenants: _Optional[_Iterable[_Union[TenantUsage, _Mapping]]] = ...) -> None: ...

class TenantUsage(_message.Message):
    __slots__ = ("tenant_id", "counting_since", "ingress", "egress")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTING_SINCE_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    counting_since: _timestamp_pb2.Timestamp
    ingress: TrafficCounters
    egress: TrafficCounters
    def __init__(self, tenant_id: _Optional[str] = ..., counting_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ingress: _Optional[_Union[TrafficCounters, _Mapping]] = ..., egress: _Optional[_Union[TrafficCounters, _Mapping]] = ...) -> None: ...

class TrafficCounters(_message.Message):
    __slots__ = ("packets", "bytes", "meter_dropped_packets", "meter_dropped_bytes")
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    METER_DROPPED_PACKETS_FIELD_NUMBER: _ClassVar[int]
    METER_DROPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    packets: int
    bytes: int
    meter_dropped_packets: int
    meter_dropped_bytes: int
    def __init__(self, packets: _Optional[int] = ..., bytes: _Optional[int] = ..., meter_dropped_packets: _Optional[int] = ..., meter_dropped_bytes: _Optional[int] = ...) -> None: ...
