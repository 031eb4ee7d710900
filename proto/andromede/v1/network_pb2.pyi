from andromede.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ethertype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ETHERTYPE_UNSPECIFIED: _ClassVar[Ethertype]
    ETHERTYPE_IPV4: _ClassVar[Ethertype]
    ETHERTYPE_IPV6: _ClassVar[Ethertype]

class TraceVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACE_VERDICT_UNSPECIFIED: _ClassVar[TraceVerdict]
    TRACE_VERDICT_DELIVERED: _ClassVar[TraceVerdict]
    TRACE_VERDICT_TUNNELLED: _ClassVar[TraceVerdict]
    TRACE_VERDICT_DROPPED: _ClassVar[TraceVerdict]
ETHERTYPE_UNSPECIFIED: Ethertype
ETHERTYPE_IPV4: Ethertype
ETHERTYPE_IPV6: Ethertype
TRACE_VERDICT_UNSPECIFIED: TraceVerdict
TRACE_VERDICT_DELIVERED: TraceVerdict
TRACE_VERDICT_TUNNELLED: TraceVerdict
TRACE_VERDICT_DROPPED: TraceVerdict

class TenantNetwork(_message.Message):
    __slots__ = ("id", "tenant_id", "vni", "mtu")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    vni: int
    mtu: int
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., vni: _Optional[int] = ..., mtu: _Optional[int] = ...) -> None: ...

class NetworkRecord(_message.Message):
    __slots__ = ("spec", "meta", "status")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    spec: TenantNetwork
    meta: _common_pb2.ObjectMeta
    status: _common_pb2.ObjectStatus
    def __init__(self, spec: _Optional[_Union[TenantNetwork, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ObjectMeta, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.ObjectStatus, _Mapping]] = ...) -> None: ...

class PutNetworksRequest(_message.Message):
    __slots__ = ("request_id", "networks")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    networks: _containers.RepeatedCompositeFieldContainer[TenantNetwork]
    def __init__(self, request_id: _Optional[str] = ..., networks: _Optional[_Iterable[_Union[TenantNetwork, _Mapping]]] = ...) -> None: ...

class PutNetworksResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class DeleteNetworksRequest(_message.Message):
    __slots__ = ("request_id", "ids", "allow_missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteNetworksResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetNetworkResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: NetworkRecord
    def __init__(self, network: _Optional[_Union[NetworkRecord, _Mapping]] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks", "next_page_token", "cursor")
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[NetworkRecord]
    next_page_token: str
    cursor: str
    def __init__(self, networks: _Optional[_Iterable[_Union[NetworkRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class Port(_message.Message):
    __slots__ = ("id", "tenant_id", "network_id", "mac", "fixed_ips", "allowed_address_pairs", "security_group_ids", "port_security_enabled", "admin_state_up", "vm_nic", "tap")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    FIXED_IPS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ADDRESS_PAIRS_FIELD_NUMBER: _ClassVar[int]
    SECURITY_GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    PORT_SECURITY_ENABLED_FIELD_NUMBER: _ClassVar[int]
    ADMIN_STATE_UP_FIELD_NUMBER: _ClassVar[int]
    VM_NIC_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    network_id: str
    mac: str
    fixed_ips: _containers.RepeatedScalarFieldContainer[str]
    allowed_address_pairs: _containers.RepeatedCompositeFieldContainer[AllowedAddressPair]
    security_group_ids: _containers.RepeatedScalarFieldContainer[str]
    port_security_enabled: bool
    admin_state_up: bool
    vm_nic: VmNicBinding
    tap: TapBinding
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., network_id: _Optional[str] = ..., mac: _Optional[str] = ..., fixed_ips: _Optional[_Iterable[str]] = ..., allowed_address_pairs: _Optional[_Iterable[_Union[AllowedAddressPair, _Mapping]]] = ..., security_group_ids: _Optional[_Iterable[str]] = ..., port_security_enabled: _Optional[bool] = ..., admin_state_up: _Optional[bool] = ..., vm_nic: _Optional[_Union[VmNicBinding, _Mapping]] = ..., tap: _Optional[_Union[TapBinding, _Mapping]] = ...) -> None: ...

class AllowedAddressPair(_message.Message):
    __slots__ = ("ip_prefix", "mac")
    IP_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    ip_prefix: str
    mac: str
    def __init__(self, ip_prefix: _Optional[str] = ..., mac: _Optional[str] = ...) -> None: ...

class VmNicBinding(_message.Message):
    __slots__ = ("vm_id", "nic_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NIC_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    nic_id: str
    def __init__(self, vm_id: _Optional[str] = ..., nic_id: _Optional[str] = ...) -> None: ...

class TapBinding(_message.Message):
    __slots__ = ("interface_name",)
    INTERFACE_NAME_FIELD_NUMBER: _ClassVar[int]
    interface_name: str
    def __init__(self, interface_name: _Optional[str] = ...) -> None: ...

class PortRuntime(_message.Message):
    __slots__ = ("interface_name", "ofport", "link_up")
    INTERFACE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFPORT_FIELD_NUMBER: _ClassVar[int]
    LINK_UP_FIELD_NUMBER: _ClassVar[int]
    interface_name: str
    ofport: int
    link_up: bool
    def __init__(self, interface_name: _Optional[str] = ..., ofport: _Optional[int] = ..., link_up: _Optional[bool] = ...) -> None: ...

class PortRecord(_message.Message):
    __slots__ = ("spec", "meta", "status", "runtime")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    spec: Port
    meta: _common_pb2.ObjectMeta
    status: _common_pb2.ObjectStatus
    runtime: PortRuntime
    def __init__(self, spec: _Optional[_Union[Port, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ObjectMeta, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.ObjectStatus, _Mapping]] = ..., runtime: _Optional[_Union[PortRuntime, _Mapping]] = ...) -> None: ...

class PutPortsRequest(_message.Message):
    __slots__ = ("request_id", "ports")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ports: _containers.RepeatedCompositeFieldContainer[Port]
    def __init__(self, request_id: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[Port, _Mapping]]] = ...) -> None: ...

class PutPortsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class DeletePortsRequest(_message.Message):
    __slots__ = ("request_id", "ids", "allow_missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeletePortsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class GetPortRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetPortResponse(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: PortRecord
    def __init__(self, port: _Optional[_Union[PortRecord, _Mapping]] = ...) -> None: ...

class ListPortsRequest(_message.Message):
    __slots__ = ("tenant_id", "network_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    network_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., network_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPortsResponse(_message.Message):
    __slots__ = ("ports", "next_page_token", "cursor")
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedCompositeFieldContainer[PortRecord]
    next_page_token: str
    cursor: str
    def __init__(self, ports: _Optional[_Iterable[_Union[PortRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class SecurityGroup(_message.Message):
    __slots__ = ("id", "tenant_id", "rules", "stateful", "member_ips")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    STATEFUL_FIELD_NUMBER: _ClassVar[int]
    MEMBER_IPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    rules: _containers.RepeatedCompositeFieldContainer[SecurityGroupRule]
    stateful: bool
    member_ips: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[SecurityGroupRule, _Mapping]]] = ..., stateful: _Optional[bool] = ..., member_ips: _Optional[_Iterable[str]] = ...) -> None: ...

class SecurityGroupRule(_message.Message):
    __slots__ = ("direction", "ethertype", "protocol", "port_range_min", "port_range_max", "remote_cidr", "remote_group_id")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    ETHERTYPE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_RANGE_MIN_FIELD_NUMBER: _ClassVar[int]
    PORT_RANGE_MAX_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CIDR_FIELD_NUMBER: _ClassVar[int]
    REMOTE_GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    direction: _common_pb2.Direction
    ethertype: Ethertype
    protocol: int
    port_range_min: int
    port_range_max: int
    remote_cidr: str
    remote_group_id: str
    def __init__(self, direction: _Optional[_Union[_common_pb2.Direction, str]] = ..., ethertype: _Optional[_Union[Ethertype, str]] = ..., protocol: _Optional[int] = ..., port_range_min: _Optional[int] = ..., port_range_max: _Optional[int] = ..., remote_cidr: _Optional[str] = ..., remote_group_id: _Optional[str] = ...) -> None: ...

class SecurityGroupRecord(_message.Message):
    __slots__ = ("spec", "meta", "status")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    spec: SecurityGroup
    meta: _common_pb2.ObjectMeta
    status: _common_pb2.ObjectStatus
    def __init__(self, spec: _Optional[_Union[SecurityGroup, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ObjectMeta, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.ObjectStatus, _Mapping]] = ...) -> None: ...

class PutSecurityGroupsRequest(_message.Message):
    __slots__ = ("request_id", "security_groups")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SECURITY_GROUPS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    security_groups: _containers.RepeatedCompositeFieldContainer[SecurityGroup]
    def __init__(self, request_id: _Optional[str] = ..., security_groups: _Optional[_Iterable[_Union[SecurityGroup, _Mapping]]] = ...) -> None: ...

class PutSecurityGroupsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class DeleteSecurityGroupsRequest(_message.Message):
    __slots__ = ("request_id", "ids", "allow_missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteSecurityGroupsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class GetSecurityGroupRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetSecurityGroupResponse(_message.Message):
    __slots__ = ("security_group",)
    SECURITY_GROUP_FIELD_NUMBER: _ClassVar[int]
    security_group: SecurityGroupRecord
    def __init__(self, security_group: _Optional[_Union[SecurityGroupRecord, _Mapping]] = ...) -> None: ...

class ListSecurityGroupsRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSecurityGroupsResponse(_message.Message):
    __slots__ = ("security_groups", "next_page_token", "cursor")
    SECURITY_GROUPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    security_groups: _containers.RepeatedCompositeFieldContainer[SecurityGroupRecord]
    next_page_token: str
    cursor: str
    def __init__(self, security_groups: _Optional[_Iterable[_Union[SecurityGroupRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class TunnelEndpoint(_message.Message):
    __slots__ = ("id", "ip")
    ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    id: str
    ip: str
    def __init__(self, id: _Optional[str] = ..., ip: _Optional[str] = ...) -> None: ...

class TunnelEndpointRecord(_message.Message):
    __slots__ = ("spec", "meta", "status")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    spec: TunnelEndpoint
    meta: _common_pb2.ObjectMeta
    status: _common_pb2.ObjectStatus
    def __init__(self, spec: _Optional[_Union[TunnelEndpoint, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ObjectMeta, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.ObjectStatus, _Mapping]] = ...) -> None: ...

class PutTunnelEndpointsRequest(_message.Message):
    __slots__ = ("request_id", "tunnel_endpoints")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tunnel_endpoints: _containers.RepeatedCompositeFieldContainer[TunnelEndpoint]
    def __init__(self, request_id: _Optional[str] = ..., tunnel_endpoints: _Optional[_Iterable[_Union[TunnelEndpoint, _Mapping]]] = ...) -> None: ...

class PutTunnelEndpointsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class DeleteTunnelEndpointsRequest(_message.Message):
    __slots__ = ("request_id", "ids", "allow_missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteTunnelEndpointsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class GetTunnelEndpointRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetTunnelEndpointResponse(_message.Message):
    __slots__ = ("tunnel_endpoint",)
    TUNNEL_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    tunnel_endpoint: TunnelEndpointRecord
    def __init__(self, tunnel_endpoint: _Optional[_Union[TunnelEndpointRecord, _Mapping]] = ...) -> None: ...

class ListTunnelEndpointsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTunnelEndpointsResponse(_message.Message):
    __slots__ = ("tunnel_endpoints", "next_page_token", "cursor")
    TUNNEL_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    tunnel_endpoints: _containers.RepeatedCompositeFieldContainer[TunnelEndpointRecord]
    next_page_token: str
    cursor: str
    def __init__(self, tunnel_endpoints: _Optional[_Iterable[_Union[TunnelEndpointRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class L2Entry(_message.Message):
    __slots__ = ("id", "network_id", "mac", "ip_addresses", "tunnel_endpoint_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    network_id: str
    mac: str
    ip_addresses: _containers.RepeatedScalarFieldContainer[str]
    tunnel_endpoint_id: str
    def __init__(self, id: _Optional[str] = ..., network_id: _Optional[str] = ..., mac: _Optional[str] = ..., ip_addresses: _Optional[_Iterable[str]] = ..., tunnel_endpoint_id: _Optional[str] = ...) -> None: ...

class L2EntryRecord(_message.Message):
    __slots__ = ("spec", "meta", "status")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    spec: L2Entry
    meta: _common_pb2.ObjectMeta
    status: _common_pb2.ObjectStatus
    def __init__(self, spec: _Optional[_Union[L2Entry, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ObjectMeta, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.ObjectStatus, _Mapping]] = ...) -> None: ...

class PutL2EntriesRequest(_message.Message):
    __slots__ = ("request_id", "l2_entries")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    L2_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    l2_entries: _containers.RepeatedCompositeFieldContainer[L2Entry]
    def __init__(self, request_id: _Optional[str] = ..., l2_entries: _Optional[_Iterable[_Union[L2Entry, _Mapping]]] = ...) -> None: ...

class PutL2EntriesResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class DeleteL2EntriesRequest(_message.Message):
    __slots__ = ("request_id", "ids", "allow_missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteL2EntriesResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class GetL2EntryRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetL2EntryResponse(_message.Message):
    __slots__ = ("l2_entry",)
    L2_ENTRY_FIELD_NUMBER: _ClassVar[int]
    l2_entry: L2EntryRecord
    def __init__(self, l2_entry: _Optional[_Union[L2EntryRecord, _Mapping]] = ...) -> None: ...

class ListL2EntriesRequest(_message.Message):
    __slots__ = ("network_id", "tunnel_endpoint_id", "page_size", "page_token")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    tunnel_endpoint_id: str
    page_size: int
    page_token: str
    def __init__(self, network_id: _Optional[str] = ..., tunnel_endpoint_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListL2EntriesResponse(_message.Message):
    __slots__ = ("l2_entries", "next_page_token", "cursor")
    L2_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    l2_entries: _containers.RepeatedCompositeFieldContainer[L2EntryRecord]
    next_page_token: str
    cursor: str
    def __init__(self, l2_entries: _Optional[_Iterable[_Union[L2EntryRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("id", "tenant_id", "direction", "cir_bytes_per_s", "cbs_bytes", "pir_bytes_per_s", "pbs_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CIR_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CBS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIR_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PBS_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    direction: _common_pb2.Direction
    cir_bytes_per_s: int
    cbs_bytes: int
    pir_bytes_per_s: int
    pbs_bytes: int
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., direction: _Optional[_Union[_common_pb2.Direction, str]] = ..., cir_bytes_per_s: _Optional[int] = ..., cbs_bytes: _Optional[int] = ..., pir_bytes_per_s: _Optional[int] = ..., pbs_bytes: _Optional[int] = ...) -> None: ...

class RateLimitRecord(_message.Message):
    __slots__ = ("spec", "meta", "status")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    spec: RateLimit
    meta: _common_pb2.ObjectMeta
    status: _common_pb2.ObjectStatus
    def __init__(self, spec: _Optional[_Union[RateLimit, _Mapping]] = ..., meta: _Optional[_Union[_common_pb2.ObjectMeta, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.ObjectStatus, _Mapping]] = ...) -> None: ...

class PutRateLimitsRequest(_message.Message):
    __slots__ = ("request_id", "rate_limits")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rate_limits: _containers.RepeatedCompositeFieldContainer[RateLimit]
    def __init__(self, request_id: _Optional[str] = ..., rate_limits: _Optional[_Iterable[_Union[RateLimit, _Mapping]]] = ...) -> None: ...

class PutRateLimitsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class DeleteRateLimitsRequest(_message.Message):
    __slots__ = ("request_id", "ids", "allow_missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteRateLimitsResponse(_message.Message):
    __slots__ = ("generation", "results")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectResult]
    def __init__(self, generation: _Optional[int] = ..., results: _Optional[_Iterable[_Union[_common_pb2.ObjectResult, _Mapping]]] = ...) -> None: ...

class GetRateLimitRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetRateLimitResponse(_message.Message):
    __slots__ = ("rate_limit",)
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    rate_limit: RateLimitRecord
    def __init__(self, rate_limit: _Optional[_Union[RateLimitRecord, _Mapping]] = ...) -> None: ...

class ListRateLimitsRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRateLimitsResponse(_message.Message):
    __slots__ = ("rate_limits", "next_page_token", "cursor")
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    rate_limits: _containers.RepeatedCompositeFieldContainer[RateLimitRecord]
    next_page_token: str
    cursor: str
    def __init__(self, rate_limits: _Optional[_Iterable[_Union[RateLimitRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class GetPacketTraceRequest(_message.Message):
    __slots__ = ("port_id", "dst_ip", "src_ip", "dst_mac", "protocol", "dst_port")
    PORT_ID_FIELD_NUMBER: _ClassVar[int]
    DST_IP_FIELD_NUMBER: _ClassVar[int]
    SRC_IP_FIELD_NUMBER: _ClassVar[int]
    DST_MAC_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    port_id: str
    dst_ip: str
    src_ip: str
    dst_mac: str
    protocol: int
    dst_port: int
    def __init__(self, port_id: _Optional[str] = ..., dst_ip: _Optional[str] = ..., src_ip: _Optional[str] = ..., dst_mac: _Optional[str] = ..., protocol: _Optional[int] = ..., dst_port: _Optional[int] = ...) -> None: ...

class GetPacketTraceResponse(_message.Message):
    __slots__ = ("verdict", "tables", "ofports", "tunnel_dst", "trace")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    OFPORTS_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_DST_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    verdict: TraceVerdict
    tables: _containers.RepeatedScalarFieldContainer[str]
    ofports: _containers.RepeatedScalarFieldContainer[int]
    tunnel_dst: str
    trace: str
    def __init__(self, verdict: _Optional[_Union[TraceVerdict, str]] = ..., tables: _Optional[_Iterable[str]] = ..., ofports: _Optional[_Iterable[int]] = ..., tunnel_dst: _Optional[str] = ..., trace: _Optional[str] = ...) -> None: ...

class ListFlowsRequest(_message.Message):
    __slots__ = ("port_id", "tenant_id")
    PORT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    port_id: str
    tenant_id: str
    def __init__(self, port_id: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class ListFlowsResponse(_message.Message):
    __slots__ = ("flows",)
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[FlowEntry]
    def __init__(self, flows: _Optional[_Iterable[_Union[FlowEntry, _Mapping]]] = ...) -> None: ...

class FlowEntry(_message.Message):
    __slots__ = ("table_id", "table", "priority", "match", "actions", "cookie", "tenant_id", "direction", "packets", "bytes")
    TABLE_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    table_id: int
    table: str
    priority: int
    match: str
    actions: str
    cookie: int
    tenant_id: str
    direction: _common_pb2.Direction
    packets: int
    bytes: int
    def __init__(self, table_id: _Optional[int] = ..., table: _Optional[str] = ..., priority: _Optional[int] = ..., match: _Optional[str] = ..., actions: _Optional[str] = ..., cookie: _Optional[int] = ..., tenant_id: _Optional[str] = ..., direction: _Optional[_Union[_common_pb2.Direction, str]] = ..., packets: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
