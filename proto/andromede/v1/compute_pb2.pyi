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

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_RAW: _ClassVar[ImageFormat]
    IMAGE_FORMAT_QCOW2: _ClassVar[ImageFormat]

class NicModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NIC_MODEL_UNSPECIFIED: _ClassVar[NicModel]
    NIC_MODEL_VIRTIO: _ClassVar[NicModel]
    NIC_MODEL_E1000E: _ClassVar[NicModel]

class PowerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_STATE_UNSPECIFIED: _ClassVar[PowerState]
    POWER_STATE_RUNNING: _ClassVar[PowerState]
    POWER_STATE_STOPPED: _ClassVar[PowerState]
    POWER_STATE_PAUSED: _ClassVar[PowerState]

class Accel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCEL_UNSPECIFIED: _ClassVar[Accel]
    ACCEL_KVM: _ClassVar[Accel]
    ACCEL_TCG: _ClassVar[Accel]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]
    RUN_STATE_STARTING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_PAUSED: _ClassVar[RunState]
    RUN_STATE_STOPPING: _ClassVar[RunState]
    RUN_STATE_CRASHED: _ClassVar[RunState]

class RebootKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REBOOT_KIND_UNSPECIFIED: _ClassVar[RebootKind]
    REBOOT_KIND_SOFT: _ClassVar[RebootKind]
    REBOOT_KIND_HARD: _ClassVar[RebootKind]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_RAW: ImageFormat
IMAGE_FORMAT_QCOW2: ImageFormat
NIC_MODEL_UNSPECIFIED: NicModel
NIC_MODEL_VIRTIO: NicModel
NIC_MODEL_E1000E: NicModel
POWER_STATE_UNSPECIFIED: PowerState
POWER_STATE_RUNNING: PowerState
POWER_STATE_STOPPED: PowerState
POWER_STATE_PAUSED: PowerState
ACCEL_UNSPECIFIED: Accel
ACCEL_KVM: Accel
ACCEL_TCG: Accel
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_STOPPED: RunState
RUN_STATE_STARTING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_PAUSED: RunState
RUN_STATE_STOPPING: RunState
RUN_STATE_CRASHED: RunState
REBOOT_KIND_UNSPECIFIED: RebootKind
REBOOT_KIND_SOFT: RebootKind
REBOOT_KIND_HARD: RebootKind

class Vm(_message.Message):
    __slots__ = ("id", "tenant_id", "vcpus", "memory_mb", "kernel", "initrd", "kernel_cmdline", "disks", "nics", "power_state", "shutdown_timeout_s", "accel", "numa_node", "hugepages")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    INITRD_FIELD_NUMBER: _ClassVar[int]
    KERNEL_CMDLINE_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ACCEL_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    HUGEPAGES_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    vcpus: int
    memory_mb: int
    kernel: ImageRef
    initrd: ImageRef
    kernel_cmdline: str
    disks: _containers.RepeatedCompositeFieldContainer[VmDisk]
    nics: _containers.RepeatedCompositeFieldContainer[VmNic]
    power_state: PowerState
    shutdown_timeout_s: int
    accel: Accel
    numa_node: int
    hugepages: bool
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., kernel: _Optional[_Union[ImageRef, _Mapping]] = ..., initrd: _Optional[_Union[ImageRef, _Mapping]] = ..., kernel_cmdline: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[VmDisk, _Mapping]]] = ..., nics: _Optional[_Iterable[_Union[VmNic, _Mapping]]] = ..., power_state: _Optional[_Union[PowerState, str]] = ..., shutdown_timeout_s: _Optional[int] = ..., accel: _Optional[_Union[Accel, str]] = ..., numa_node: _Optional[int] = ..., hugepages: _Optional[bool] = ...) -> None: ...

class ImageRef(_message.Message):
    __slots__ = ("path", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class VmDisk(_message.Message):
    __slots__ = ("id", "image", "format", "read_only", "size_gib")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    SIZE_GIB_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: ImageRef
    format: ImageFormat
    read_only: bool
    size_gib: int
    def __init__(self, id: _Optional[str] = ..., image: _Optional[_Union[ImageRef, _Mapping]] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., read_only: _Optional[bool] = ..., size_gib: _Optional[int] = ...) -> None: ...

class VmNic(_message.Message):
    __slots__ = ("id", "port_id", "model")
    ID_FIELD_NUMBER: _ClassVar[int]
    PORT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    port_id: str
    model: NicModel
    def __init__(self, id: _Optional[str] = ..., port_id: _Optional[str] = ..., model: _Optional[_Union[NicModel, str]] = ...) -> None: ...

class VmRuntime(_message.Message):
    __slots__ = ("run_state", "qemu_status", "pid", "started_at", "accel", "crash_restarts", "serial_log_path", "nics", "cpu_seconds", "memory_rss_bytes")
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    QEMU_STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCEL_FIELD_NUMBER: _ClassVar[int]
    CRASH_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    run_state: RunState
    qemu_status: str
    pid: int
    started_at: _timestamp_pb2.Timestamp
    accel: Accel
    crash_restarts: int
    serial_log_path: str
    nics: _containers.RepeatedCompositeFieldContainer[VmNicRuntime]
    cpu_seconds: float
    memory_rss_bytes: int
    def __init__(self, run_state: _Optional[_Union[RunState, str]] = ..., qemu_status: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accel: _Optional[_Union[Accel, str]] = ..., crash_restarts: _Optional[int] = ..., serial_log_path: _Optional[str] = ..., nics: _Optional[_Iterable[_Union[VmNicRuntime, _Mapping]]] = ..., cpu_seconds: _Optional[float] = ..., memory_rss_bytes: _Optional[int] = ...) -> None: ...

class VmNicRuntime(_message.Message):
    __slots__ = ("nic_id", "port_id", "interface_name", "mac", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
    NIC_ID_FIELD_NUMBER: _ClassVar[int]
    PORT_ID_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    nic_id: str
    port_id: str
    interface_name: str
    mac: str
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    def __init__(self, nic_id: _Optional[str] = ..., port_id: _Optional[str] = ..., interface_name: _Optional[str] = ..., mac: _Optional[str] = ..., rx_packets: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., tx_packets: _Optional[int] = ..., tx_bytes: _Optional[int] = ...) -> None: ...

class VmRecord(_message.Message):
    __slots__ = ("spec", "meta", "status", "runtime")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    spec: Vm
    meta: _common_pb2.ObjectMeta
    status: _common_pb2.ObjectStatus
    runtime: VmRuntime
    def __init__(self, spec: _Optional[_Union[Vm, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ObjectMeta, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.ObjectStatus, _Mapping]] = ..., runtime: _Optional[_Union[VmRuntime, _Mapping]] = ...) -> None: ...

class PutVmsRequest(_message.Message):
    __slots__ = ("request_id", "vms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vms: _containers.RepeatedCompositeFieldContainer[Vm]
    def __init__(self, request_id: _Optional[str] = ..., vms: _Optional[_Iterable[_Union[Vm, _Mapping]]] = ...) -> None: ...

class PutVmsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class DeleteVmsRequest(_message.Message):
    __slots__ = ("request_id", "ids", "allow_missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteVmsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class GetVmRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: VmRecord
    def __init__(self, vm: _Optional[_Union[VmRecord, _Mapping]] = ...) -> None: ...

class ListVmsRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms", "next_page_token", "cursor")
    VMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VmRecord]
    next_page_token: str
    cursor: str
    def __init__(self, vms: _Optional[_Iterable[_Union[VmRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class StartVmRequest(_message.Message):
    __slots__ = ("request_id", "vm_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vm_id: str
    def __init__(self, request_id: _Optional[str] = ..., vm_id: _Optional[str] = ...) -> None: ...

class StartVmResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class StopVmRequest(_message.Message):
    __slots__ = ("request_id", "vm_id", "force")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vm_id: str
    force: bool
    def __init__(self, request_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class StopVmResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class PauseVmRequest(_message.Message):
    __slots__ = ("request_id", "vm_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vm_id: str
    def __init__(self, request_id: _Optional[str] = ..., vm_id: _Optional[str] = ...) -> None: ...

class PauseVmResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class ResumeVmRequest(_message.Message):
    __slots__ = ("request_id", "vm_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vm_id: str
    def __init__(self, request_id: _Optional[str] = ..., vm_id: _Optional[str] = ...) -> None: ...

class ResumeVmResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class RebootVmRequest(_message.Message):
    __slots__ = ("request_id", "vm_id", "kind")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vm_id: str
    kind: RebootKind
    def __init__(self, request_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., kind: _Optional[_Union[RebootKind, str]] = ...) -> None: ...

class RebootVmResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class AttachNicRequest(_message.Message):
    __slots__ = ("request_id", "vm_id", "nic")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NIC_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vm_id: str
    nic: VmNic
    def __init__(self, request_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., nic: _Optional[_Union[VmNic, _Mapping]] = ...) -> None: ...

class AttachNicResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class DetachNicRequest(_message.Message):
    __slots__ = ("request_id", "vm_id", "nic_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NIC_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    vm_id: str
    nic_id: str
    def __init__(self, request_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., nic_id: _Optional[str] = ...) -> None: ...

class DetachNicResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...
