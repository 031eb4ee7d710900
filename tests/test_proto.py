"""The gRPC API (proto/andromede/v1): its generated code is current, and its shape is the one
the control plane codes against.

The generated Python code is checked in beside the .proto files, so a fresh clone needs no
build step; these tests catch a .proto edited without regenerating, and check the services,
their streaming kinds and the conventions of common.proto.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import grpc
from google.protobuf import descriptor_pb2

from andromede.v1 import (
    common_pb2,
    compute_pb2,
    compute_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"

SERVICES = {  # service name -> (module with its messages, module with its stubs)
    "Node": (node_pb2, node_pb2_grpc),
    "Compute": (compute_pb2, compute_pb2_grpc),
    "Network": (network_pb2, network_pb2_grpc),
    "Metering": (metering_pb2, metering_pb2_grpc),
}


def _load_generator() -> ModuleType:
    """proto/generate.py, imported from its file (proto/ is not a package)."""
    spec = importlib.util.spec_from_file_location("proto_generate", PROTO_ROOT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version_hint(checked_in: dict[str, Path]) -> str:
    """Why regenerating can differ although no .proto changed: another grpcio-tools."""
    installed = importlib.metadata.version("grpcio-tools")
    for name, path in checked_in.items():
        if name.endswith("_pb2_grpc.py"):
            found = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", path.read_text())
            if found and found.group(1) != installed:
                return (
                    f" Note: the checked-in files were generated with grpcio-tools "
                    f"{found.group(1)}, but {installed} is installed. Install the version "
                    f"pyproject.toml pins (scripts/setup.sh does), or, when upgrading "
                    f"grpcio-tools on purpose, update the pin, regenerate and commit."
                )
    return ""


# --- the generated code is current ---------------------------------------------------------


def test_checked_in_generated_code_matches_the_protos(tmp_path: Path) -> None:
    generator = _load_generator()
    generator.run_protoc(tmp_path)
    fresh = generator.generated_files(tmp_path)
    checked_in = generator.generated_files(PROTO_ROOT)
    assert fresh, "protoc generated nothing: are there .proto files in proto/andromede/v1?"

    problems = [f"missing: proto/{name}" for name in sorted(fresh.keys() - checked_in.keys())]
    problems += [f"stale: proto/{name}" for name in sorted(checked_in.keys() - fresh.keys())]
    problems += [
        f"out of date: proto/{name}"
        for name in sorted(fresh.keys() & checked_in.keys())
        if fresh[name].read_bytes() != checked_in[name].read_bytes()
    ]
    assert not problems, (
        "The generated code in proto/ does not match the .proto files ("
        + "; ".join(problems)
        + "). Run `.venv/bin/python proto/generate.py` and commit the files it writes."
        + _version_hint(checked_in)
    )


def test_generating_again_rewrites_nothing(tmp_path: Path) -> None:
    generator = _load_generator()
    assert generator.generate(tmp_path)  # an empty directory: everything is written
    first = {name: path.read_bytes() for name, path in generator.generated_files(tmp_path).items()}
    assert generator.generate(tmp_path) == []
    assert {n: p.read_bytes() for n, p in generator.generated_files(tmp_path).items()} == first


# --- the services --------------------------------------------------------------------------


class _RecordingChannel:
    """Stands in for a grpc.Channel: records which kind of call each stub method is made of."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}

    def _factory(kind: str):  # noqa: N805 - makes the four methods below
        def make(self: _RecordingChannel, path: str, **_options: object) -> str:
            self.kinds[path] = kind
            return kind

        return make

    unary_unary = _factory("unary")
    unary_stream = _factory("server-streaming")
    stream_unary = _factory("client-streaming")
    stream_stream = _factory("bidi")


def _kinds(service_name: str) -> dict[str, str]:
    """Method name -> streaming kind, from the .proto's descriptor and from the generated
    stub, which must agree."""
    messages, stubs = SERVICES[service_name]
    service = messages.DESCRIPTOR.services_by_name[service_name]
    kind = {
        (False, False): "unary",
        (False, True): "server-streaming",
        (True, False): "client-streaming",
        (True, True): "bidi",
    }
    declared = {m.name: kind[(m.client_streaming, m.server_streaming)] for m in service.methods}
    channel = _RecordingChannel()
    getattr(stubs, f"{service_name}Stub")(channel)
    prefix = f"/andromede.v1.{service_name}/"
    stubbed = {path.removeprefix(prefix): k for path, k in channel.kinds.items()}
    assert stubbed == declared, f"{service_name}Stub disagrees with the .proto: regenerate"
    return declared


def test_every_service_imports_with_stub_servicer_and_registration() -> None:
    for name, (messages, stubs) in SERVICES.items():
        service = messages.DESCRIPTOR.services_by_name[name]
        assert service.full_name == f"andromede.v1.{name}"
        servicer = getattr(stubs, f"{name}Servicer")
        assert callable(getattr(stubs, f"add_{name}Servicer_to_server"))
        for method in service.methods:
            assert callable(getattr(servicer, method.name)), f"{name}Servicer.{method.name}"
        assert _kinds(name)  # and the stub has every method, of the right kind


def test_node_service_methods_and_streaming_kinds() -> None:
    assert _kinds("Node") == {
        "GetNodeInfo": "unary",
        "GetInventory": "unary",
        "SetMaintenance": "unary",
        "WatchEvents": "server-streaming",
    }


def test_metering_has_a_get_and_a_streaming_variant() -> None:
    assert _kinds("Metering") == {"GetUsage": "unary", "WatchUsage": "server-streaming"}


def test_compute_and_network_have_put_delete_get_list_for_every_kind() -> None:
    compute, network = _kinds("Compute"), _kinds("Network")
    for method in ("PutVms", "DeleteVms", "GetVm", "ListVms"):
        assert compute[method] == "unary", method
    actions = ("StartVm", "StopVm", "PauseVm", "ResumeVm", "RebootVm", "AttachNic", "DetachNic")
    for action in actions:
        assert compute[action] == "unary", action
    for kind, plural in [
        ("Network", "Networks"),
        ("Port", "Ports"),
        ("SecurityGroup", "SecurityGroups"),
        ("TunnelEndpoint", "TunnelEndpoints"),
        ("L2Entry", "L2Entries"),
        ("RateLimit", "RateLimits"),
    ]:
        for method in (f"Put{plural}", f"Delete{plural}", f"Get{kind}", f"List{plural}"):
            assert network.get(method) == "unary", method


def test_every_mutating_call_carries_a_request_id_and_answers_with_a_generation() -> None:
    mutating = 0
    for name, (messages, _) in SERVICES.items():
        for method in messages.DESCRIPTOR.services_by_name[name].methods:
            if method.name.startswith(("Get", "List", "Watch")):
                continue
            mutating += 1
            request_id = method.input_type.fields_by_name.get("request_id")
            generation = method.output_type.fields_by_name.get("generation")
            assert request_id is not None and request_id.type == request_id.TYPE_STRING, (
                f"{name}.{method.name} needs `string request_id`"
            )
            assert generation is not None and generation.type == generation.TYPE_UINT64, (
                f"{name}.{method.name} needs `uint64 generation` in its response"
            )
    # SetMaintenance; PutVms, DeleteVms and 7 VM actions; Put and Delete of 6 network kinds
    assert mutating == 1 + 2 + 7 + 6 * 2


# --- messages ------------------------------------------------------------------------------


def test_put_request_and_response_survive_a_round_trip() -> None:
    request = network_pb2.PutNetworksRequest(
        request_id="3f1c2a9e-5b7d-4e21-9a0c-6d8e2f4b1a7c",
        networks=[network_pb2.TenantNetwork(id="net-a", tenant_id="t-1", vni=2**24 - 1, mtu=1450)],
    )
    parsed = network_pb2.PutNetworksRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert parsed.request_id == "3f1c2a9e-5b7d-4e21-9a0c-6d8e2f4b1a7c"
    assert parsed.networks[0].vni == 16_777_215

    response = network_pb2.PutNetworksResponse(
        generation=2**64 - 1,
        results=[common_pb2.ObjectResult(id="net-a", generation=2**64 - 1, changed=True)],
    )
    parsed = network_pb2.PutNetworksResponse.FromString(response.SerializeToString())
    assert parsed == response
    assert parsed.generation == 18_446_744_073_709_551_615


def test_optional_fields_keep_presence_across_a_round_trip() -> None:
    off = network_pb2.Port.FromString(
        network_pb2.Port(id="p", port_security_enabled=False).SerializeToString()
    )
    unset = network_pb2.Port.FromString(network_pb2.Port(id="p").SerializeToString())
    assert off.HasField("port_security_enabled") and not off.port_security_enabled
    assert not unset.HasField("port_security_enabled")  # unset means true

    pinned = compute_pb2.Vm.FromString(compute_pb2.Vm(id="vm", numa_node=0).SerializeToString())
    assert pinned.HasField("numa_node") and pinned.numa_node == 0


def test_status_has_the_wire_shape_of_google_rpc_status_and_carries_object_errors() -> None:
    fields = {
        f.name: (f.number, f.type, f.is_repeated) for f in common_pb2.Status.DESCRIPTOR.fields
    }
    F = common_pb2.Status.DESCRIPTOR.fields_by_name["code"]
    assert fields == {  # as in google/rpc/status.proto
        "code": (1, F.TYPE_INT32, False),
        "message": (2, F.TYPE_STRING, False),
        "details": (3, F.TYPE_MESSAGE, True),
    }
    details = common_pb2.Status.DESCRIPTOR.fields_by_name["details"]
    assert details.message_type.full_name == "google.protobuf.Any"

    errors = common_pb2.ObjectErrors(
        errors=[
            common_pb2.ObjectError(
                index=3,
                id="p-3",
                code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                field="mac",
                message="must be a unicast MAC, got 'ff:ff:ff:ff:ff:ff'",
            )
        ]
    )
    status = common_pb2.Status(code=3, message="ports[3].mac: must be a unicast MAC")
    status.details.add().Pack(errors)
    parsed = common_pb2.Status.FromString(status.SerializeToString())
    unpacked = common_pb2.ObjectErrors()
    assert parsed.details[0].Unpack(unpacked)
    assert unpacked == errors


def test_every_service_method_and_field_is_documented(tmp_path: Path) -> None:
    """The .proto files are the contract: every service, rpc and field says what it means
    (units, ranges, whether it is required) in a comment."""
    generator = _load_generator()
    generator.write_descriptor_set(tmp_path / "api.pb")
    files = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "api.pb").read_bytes()).file
    undocumented = []
    for file in files:
        if not file.name.startswith("andromede/"):
            continue
        comments = {
            tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
            for loc in file.source_code_info.location
        }

        def walk(messages, path, prefix):  # `path`: where `messages` sit in the file
            for i, message in enumerate(messages):
                here = (*path, i)
                for j, field in enumerate(message.field):
                    if not comments.get((*here, 2, j)):
                        undocumented.append(f"{file.name}: {prefix}{message.name}.{field.name}")
                walk(message.nested_type, (*here, 3), f"{prefix}{message.name}.")

        walk(file.message_type, (4,), "")  # FileDescriptorProto.message_type
        for s, service in enumerate(file.service):  # FileDescriptorProto.service
            if not comments.get((6, s)):
                undocumented.append(f"{file.name}: service {service.name}")
            for m, method in enumerate(service.method):
                if not comments.get((6, s, 2, m)):
                    undocumented.append(f"{file.name}: rpc {service.name}.{method.name}")
    assert not undocumented, "add a comment (meaning, units, range, required?) to:\n" + "\n".join(
        undocumented
    )
