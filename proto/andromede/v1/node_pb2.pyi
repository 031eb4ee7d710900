import datetime

from andromede.v1 import common_pb2 as _common_pb2
from andromede.v1 import events_pb2 as _events_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatapathType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATAPATH_TYPE_UNSPECIFIED: _ClassVar[DatapathType]
    DATAPATH_TYPE_SYSTEM: _ClassVar[DatapathType]
    DATAPATH_TYPE_NETDEV: _ClassVar[DatapathType]
DATAPATH_TYPE_UNSPECIFIED: DatapathType
DATAPATH_TYPE_SYSTEM: DatapathType
DATAPATH_TYPE_NETDEV: DatapathType

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: NodeInfo
    def __init__(self, info: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("hostname", "agent_version", "api_versions", "started_at", "boot_id", "store_id", "desired_generation", "applied_generation", "capabilities", "maintenance", "resource_counts", "dataplane")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    agent_version: str
    api_versions: _containers.RepeatedScalarFieldContainer[str]
    started_at: _timestamp_pb2.Timestamp
    boot_id: str
    store_id: str
    desired_generation: int
    applied_generation: int
    capabilities: Capabilities
    maintenance: Maintenance
    resource_counts: _containers.RepeatedCompositeFieldContainer[ResourceCount]
    dataplane: DataplaneStatus
    def __init__(self, hostname: _Optional[str] = ..., agent_version: _Optional[str] = ..., api_versions: _Optional[_Iterable[str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., boot_id: _Optional[str] = ..., store_id: _Optional[str] = ..., desired_generation: _Optional[int] = ..., applied_generation: _Optional[int] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., maintenance: _Optional[_Union[Maintenance, _Mapping]] = ..., resource_counts: _Optional[_Iterable[_Union[ResourceCount, _Mapping]]] = ..., dataplane: _Optional[_Union[DataplaneStatus, _Mapping]] = ...) -> None: ...

class DataplaneStatus(_message.Message):
    __slots__ = ("ovs_connected", "flows", "tables", "last_pass_at", "last_pass_ms", "ovs_restarts")
    OVS_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    LAST_PASS_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_PASS_MS_FIELD_NUMBER: _ClassVar[int]
    OVS_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    ovs_connected: bool
    flows: int
    tables: _containers.RepeatedCompositeFieldContainer[TableFlows]
    last_pass_at: _timestamp_pb2.Timestamp
    last_pass_ms: float
    ovs_restarts: int
    def __init__(self, ovs_connected: _Optional[bool] = ..., flows: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableFlows, _Mapping]]] = ..., last_pass_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_pass_ms: _Optional[float] = ..., ovs_restarts: _Optional[int] = ...) -> None: ...

class TableFlows(_message.Message):
    __slots__ = ("table_id", "name", "flows")
    TABLE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    table_id: int
    name: str
    flows: int
    def __init__(self, table_id: _Optional[int] = ..., name: _Optional[str] = ..., flows: _Optional[int] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("kvm_usable", "kvm_detail", "qemu_version", "ovs_version", "datapath_type", "ovs_connected", "tunnel_ip", "max_network_mtu", "conntrack", "userspace_engine")
    KVM_USABLE_FIELD_NUMBER: _ClassVar[int]
    KVM_DETAIL_FIELD_NUMBER: _ClassVar[int]
    QEMU_VERSION_FIELD_NUMBER: _ClassVar[int]
    OVS_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATAPATH_TYPE_FIELD_NUMBER: _ClassVar[int]
    OVS_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_IP_FIELD_NUMBER: _ClassVar[int]
    MAX_NETWORK_MTU_FIELD_NUMBER: _ClassVar[int]
    CONNTRACK_FIELD_NUMBER: _ClassVar[int]
    USERSPACE_ENGINE_FIELD_NUMBER: _ClassVar[int]
    kvm_usable: bool
    kvm_detail: str
    qemu_version: str
    ovs_version: str
    datapath_type: DatapathType
    ovs_connected: bool
    tunnel_ip: str
    max_network_mtu: int
    conntrack: bool
    userspace_engine: bool
    def __init__(self, kvm_usable: _Optional[bool] = ..., kvm_detail: _Optional[str] = ..., qemu_version: _Optional[str] = ..., ovs_version: _Optional[str] = ..., datapath_type: _Optional[_Union[DatapathType, str]] = ..., ovs_connected: _Optional[bool] = ..., tunnel_ip: _Optional[str] = ..., max_network_mtu: _Optional[int] = ..., conntrack: _Optional[bool] = ..., userspace_engine: _Optional[bool] = ...) -> None: ...

class Maintenance(_message.Message):
    __slots__ = ("enabled", "reason", "since")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    reason: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, enabled: _Optional[bool] = ..., reason: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResourceCount(_message.Message):
    __slots__ = ("kind", "total", "applied", "failed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.ResourceKind
    total: int
    applied: int
    failed: int
    def __init__(self, kind: _Optional[_Union[_common_pb2.ResourceKind, str]] = ..., total: _Optional[int] = ..., applied: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class GetInventoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInventoryResponse(_message.Message):
    __slots__ = ("inventory",)
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    inventory: Inventory
    def __init__(self, inventory: _Optional[_Union[Inventory, _Mapping]] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("collected_at", "boot_time", "cpu", "numa_nodes", "memory", "hugepages", "disks", "load", "allocated")
    COLLECTED_AT_FIELD_NUMBER: _ClassVar[int]
    BOOT_TIME_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    HUGEPAGES_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    collected_at: _timestamp_pb2.Timestamp
    boot_time: _timestamp_pb2.Timestamp
    cpu: Cpu
    numa_nodes: _containers.RepeatedCompositeFieldContainer[NumaNode]
    memory: Memory
    hugepages: _containers.RepeatedCompositeFieldContainer[HugePages]
    disks: _containers.RepeatedCompositeFieldContainer[Disk]
    load: LoadAverage
    allocated: Allocation
    def __init__(self, collected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., boot_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu: _Optional[_Union[Cpu, _Mapping]] = ..., numa_nodes: _Optional[_Iterable[_Union[NumaNode, _Mapping]]] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., hugepages: _Optional[_Iterable[_Union[HugePages, _Mapping]]] = ..., disks: _Optional[_Iterable[_Union[Disk, _Mapping]]] = ..., load: _Optional[_Union[LoadAverage, _Mapping]] = ..., allocated: _Optional[_Union[Allocation, _Mapping]] = ...) -> None: ...

class Cpu(_message.Message):
    __slots__ = ("model", "logical_cpus", "physical_cores", "sockets", "max_frequency_mhz", "flags", "utilization_percent")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_CPUS_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    MAX_FREQUENCY_MHZ_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    logical_cpus: int
    physical_cores: int
    sockets: int
    max_frequency_mhz: float
    flags: _containers.RepeatedScalarFieldContainer[str]
    utilization_percent: float
    def __init__(self, model: _Optional[str] = ..., logical_cpus: _Optional[int] = ..., physical_cores: _Optional[int] = ..., sockets: _Optional[int] = ..., max_frequency_mhz: _Optional[float] = ..., flags: _Optional[_Iterable[str]] = ..., utilization_percent: _Optional[float] = ...) -> None: ...

class NumaNode(_message.Message):
    __slots__ = ("id", "cpus", "memory_total_bytes", "memory_free_bytes", "hugepages")
    ID_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HUGEPAGES_FIELD_NUMBER: _ClassVar[int]
    id: int
    cpus: _containers.RepeatedScalarFieldContainer[int]
    memory_total_bytes: int
    memory_free_bytes: int
    hugepages: _containers.RepeatedCompositeFieldContainer[HugePages]
    def __init__(self, id: _Optional[int] = ..., cpus: _Optional[_Iterable[int]] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., hugepages: _Optional[_Iterable[_Union[HugePages, _Mapping]]] = ...) -> None: ...

class Memory(_message.Message):
    __slots__ = ("total_bytes", "available_bytes", "used_bytes", "swap_total_bytes", "swap_used_bytes")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    available_bytes: int
    used_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    def __init__(self, total_bytes: _Optional[int] = ..., available_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., swap_total_bytes: _Optional[int] = ..., swap_used_bytes: _Optional[int] = ...) -> None: ...

class HugePages(_message.Message):
    __slots__ = ("page_size_bytes", "total_pages", "free_pages")
    PAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    FREE_PAGES_FIELD_NUMBER: _ClassVar[int]
    page_size_bytes: int
    total_pages: int
    free_pages: int
    def __init__(self, page_size_bytes: _Optional[int] = ..., total_pages: _Optional[int] = ..., free_pages: _Optional[int] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("device", "mountpoint", "fstype", "total_bytes", "used_bytes", "free_bytes", "holds_vm_storage")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    FSTYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOLDS_VM_STORAGE_FIELD_NUMBER: _ClassVar[int]
    device: str
    mountpoint: str
    fstype: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    holds_vm_storage: bool
    def __init__(self, device: _Optional[str] = ..., mountpoint: _Optional[str] = ..., fstype: _Optional[str] = ..., total_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., holds_vm_storage: _Optional[bool] = ...) -> None: ...

class LoadAverage(_message.Message):
    __slots__ = ("load1", "load5", "load15")
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    load1: float
    load5: float
    load15: float
    def __init__(self, load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("vms", "vcpus", "memory_mb")
    VMS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    vms: int
    vcpus: int
    memory_mb: int
    def __init__(self, vms: _Optional[int] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ...) -> None: ...

class SetMaintenanceRequest(_message.Message):
    __slots__ = ("request_id", "enabled", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    enabled: bool
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., enabled: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SetMaintenanceResponse(_message.Message):
    __slots__ = ("generation", "maintenance")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    generation: int
    maintenance: Maintenance
    def __init__(self, generation: _Optional[int] = ..., maintenance: _Optional[_Union[Maintenance, _Mapping]] = ...) -> None: ...
