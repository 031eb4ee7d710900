"""`andromede vm ...`: the Compute service's VMs, for the operator.

    andromede --lab ./lab vm create web.toml --wait       # PutVms from a spec file
    andromede --lab ./lab vm list --tenant blue           # a table for people
    andromede --lab ./lab --json vm get web-1             # the record as JSON
    andromede --lab ./lab vm stop web-1 --force --wait --timeout 30
    andromede --lab ./lab vm console web-1 --follow       # the guest's serial console

Where data comes from: the agent's Compute service, over the channel agent/cli.py opened
(ListVms page after page, GetVm for one VM, PutVms, DeleteVms and the one-VM actions), and the
Node service's GetNodeInfo for `--wait` (the host's applied generation, polled until it reaches
the generation the call was accepted at). `create` reads a spec file: TOML (tomllib) or JSON
by its extension, one VM, or several under `[[vm]]` (TOML) / `{"vm": [...]}` or a list (JSON),
with the fields of compute.proto's Vm by their proto names and enums by their short names,
case-insensitively (`power_state = "stopped"`, `model = "e1000e"`); a file at fault is refused
before anything is sent, naming the file and the field (exit 2). `console` reads the serial
log file GetVm's runtime names: the CLI runs on the host.

Where it goes: stdout, as tables and `field: value` lines (agent/cli_network.py's helpers) or,
with --json, each record or response as google.protobuf.json_format prints it, one per line.
Every mutating call carries --request-id, or a new UUID: the same call with the same id is a
safe retry (common.proto).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from agent.cli_network import Kind, _message, _pages, _print_json_line, _print_record, _print_table
from agent.cli_network import _spec, _state, table
from andromede.v1 import compute_pb2, compute_pb2_grpc, node_pb2, node_pb2_grpc

WAIT_S = 60.0  # --wait's default --timeout
CONSOLE_LINES = 40
FOLLOW_POLL_S = 0.25
_POLL_S = (0.05, 1.0)  # --wait's first and longest pause between two GetNodeInfo calls


class SpecError(Exception):
    """A spec file at fault: printed as `andromede: <file>: <field>: <what>`, exit 2."""


# --- enums and cells ---------------------------------------------------------------------------


def _prefix(enum: EnumDescriptor) -> str:
    """ "PowerState" -> "POWER_STATE_": what every value name of the enum starts with."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _short(enum: EnumDescriptor, number: int, unset: str = "-") -> str:
    """An enum value's short name in lower case ("POWER_STATE_RUNNING" -> "running"); `unset`
    for UNSPECIFIED, the number itself for a value this CLI does not know."""
    if number == 0:
        return unset
    value = enum.values_by_number.get(number)
    return value.name.removeprefix(_prefix(enum)).lower() if value is not None else str(number)


def _choices(enum: EnumDescriptor) -> list[str]:
    return [_short(enum, v.number) for v in enum.values if v.number != 0]


_POWER, _RUN = compute_pb2.PowerState.DESCRIPTOR, compute_pb2.RunState.DESCRIPTOR
_ACCEL, _MODEL = compute_pb2.Accel.DESCRIPTOR, compute_pb2.NicModel.DESCRIPTOR
_FORMAT = compute_pb2.ImageFormat.DESCRIPTOR


def _power(record: Any) -> str:
    return _short(_POWER, record.spec.power_state, "running")  # UNSPECIFIED means RUNNING


def _run_state(record: Any) -> str:
    return _short(_RUN, record.runtime.run_state)


def _qemu(record: Any) -> str:
    return record.runtime.qemu_status or "-"


def _pid(record: Any) -> str:
    return str(record.runtime.pid or "-")


def _accel(record: Any) -> str:
    """The accelerator in use, else the one asked for ("auto": KVM if usable, else TCG)."""
    return _short(_ACCEL, record.runtime.accel or record.spec.accel, "auto")


def _nics(record: Any) -> str:
    return ",".join(nic.port_id for nic in record.spec.nics) or "-"


def _image(ref: compute_pb2.ImageRef) -> str:
    return ref.path + (f" (sha256 {ref.sha256})" if ref.sha256 else "")


def _kernel(record: Any) -> str:
    spec = record.spec
    if not spec.HasField("kernel"):
        return "- (boots from the first disk)"
    initrd = f", initrd {_image(spec.initrd)}" if spec.HasField("initrd") else ""
    return f"{_image(spec.kernel)}{initrd}"


def _cmdline(record: Any) -> str:
    return record.spec.kernel_cmdline or "-"


def _size(record: Any) -> str:
    spec = record.spec
    numa = f", NUMA node {spec.numa_node}" if spec.HasField("numa_node") else ""
    huge = ", hugepages" if spec.hugepages else ""
    return f"{spec.vcpus} vCPU, {spec.memory_mb} MiB{numa}{huge}"


def _disks(record: Any) -> str:
    lines = []
    for disk in record.spec.disks:
        mode = "read-only" if disk.read_only else "overlay"
        size = f" {disk.size_gib} GiB" if disk.size_gib else ""
        lines.append(f"\n  {disk.id}: {_image(disk.image)}, {_short(_FORMAT, disk.format)}, "
                     f"{mode}{size}")  # fmt: skip
    return "".join(lines) or "-"


def _nic_list(record: Any) -> str:
    plugged = {nic.nic_id: nic for nic in record.runtime.nics}
    lines = []
    for nic in record.spec.nics:
        line = f"\n  {nic.id}: port {nic.port_id}, {_short(_MODEL, nic.model, 'virtio')}"
        now = plugged.pop(nic.id, None)
        line += (f", tap {now.interface_name}, mac {now.mac}, rx {now.rx_packets} packets "
                 f"{now.rx_bytes} B, tx {now.tx_packets} packets {now.tx_bytes} B"
                 if now else ", not plugged")  # fmt: skip
        lines.append(line)
    for nic in plugged.values():  # plugged, no longer in the spec: being unplugged
        lines.append(f"\n  {nic.nic_id}: port {nic.port_id}, tap {nic.interface_name}, "
                     f"mac {nic.mac} (leaving)")  # fmt: skip
    return "".join(lines) or "-"


def _shutdown(record: Any) -> str:
    return f"{record.spec.shutdown_timeout_s or 60} s"


def _process(record: Any) -> str:
    runtime = record.runtime
    if not runtime.pid:
        return "-"
    started = ""
    if runtime.HasField("started_at"):
        started = f", started {runtime.started_at.ToDatetime().isoformat(timespec='seconds')}Z"
    return (f"pid {runtime.pid}{started}, QEMU {runtime.qemu_status or '-'}, CPU "
            f"{runtime.cpu_seconds:.1f} s, RSS {runtime.memory_rss_bytes >> 20} MiB")  # fmt: skip


def _crashes(record: Any) -> str:
    return str(record.runtime.crash_restarts)


def _serial(record: Any) -> str:
    return record.runtime.serial_log_path or "-"


VM = Kind(
    "vm", "Vm", "Vms", "VMs on this host",
    (("id", _spec("id")), ("tenant", _spec("tenant_id")), ("power", _power),
     ("run state", _run_state), ("qemu", _qemu), ("pid", _pid), ("accel", _accel),
     ("nics", _nics), ("state", _state), ("message", _message)),
    filters=(("--tenant", "tenant_id"),),
    details=(("size", _size), ("kernel", _kernel), ("cmdline", _cmdline), ("disks", _disks),
             ("nic list", _nic_list), ("shutdown", _shutdown), ("process", _process),
             ("crash restarts", _crashes), ("serial log", _serial)),
)  # fmt: skip
"""The table of `vm list` (`columns`) and the lines `vm get` prints after them (`details`)."""


# --- commands ------------------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction) -> None:
    vm = sub.add_parser("vm", help="VMs on this host (the Compute service)")
    verbs = vm.add_subparsers(dest="verb", required=True)

    def mutating(name: str, help: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help)
        parser.add_argument("--request-id", help="default: a new UUID (reuse one to retry safely)")
        parser.add_argument("--wait", action="store_true",
                            help="then wait until the host has applied the change")  # fmt: skip
        parser.add_argument(
            "--timeout", dest="wait_timeout", type=float, default=WAIT_S, metavar="SECONDS",
            help=f"with --wait: how long to wait (default {WAIT_S:g}; the --timeout before "
                 f"the command is per call)",
        )  # fmt: skip
        return parser

    mutating("create", "PutVms: create or replace the VMs of a spec file").add_argument(
        "file", type=Path, help="TOML or JSON (by extension): one VM, or several as [[vm]]"
    )
    verbs.add_parser("list", help="ListVms, every page").add_argument(
        "--tenant", dest="tenant_id", default="", help="only this tenant's VMs"
    )
    verbs.add_parser("get", help="GetVm").add_argument("id", metavar="ID")
    for name, what in (("start", "StartVm: power on (from stopped or paused)"),
                       ("stop", "StopVm: ACPI shutdown, then by force after the VM's timeout"),
                       ("pause", "PauseVm: stop the vCPUs"),
                       ("resume", "ResumeVm: from paused back to running"),
                       ("reboot", "RebootVm: a running VM")):  # fmt: skip
        parser = mutating(name, what)
        parser.add_argument("id", metavar="ID")
        if name == "stop":
            parser.add_argument("--force", action="store_true", help="end QEMU at once")
        if name == "reboot":
            parser.add_argument(
                "--hard", action="store_true", help="reset at once (default: ACPI shutdown first)"
            )
    delete = mutating("delete", "DeleteVms: stop and remove VMs and their disk overlays")
    delete.add_argument("ids", nargs="+", metavar="ID")
    delete.add_argument("--allow-missing", action="store_true", help="skip ids of no VM")
    attach = mutating("attach-nic", "AttachNic: add a NIC (hot-plugged if running)")
    attach.add_argument("id", metavar="VM")
    attach.add_argument("nic_id", metavar="NIC_ID")
    attach.add_argument("port_id", metavar="PORT_ID", help="a port bound to this VM's NIC")
    attach.add_argument("--model", choices=_choices(_MODEL), default="virtio")
    detach = mutating("detach-nic", "DetachNic: remove a NIC (the port stays)")
    detach.add_argument("id", metavar="VM")
    detach.add_argument("nic_id", metavar="NIC_ID")
    console = verbs.add_parser("console", help="the tail of the guest's serial console log")
    console.add_argument("id", metavar="ID")
    console.add_argument("--lines", "-n", type=int, default=CONSOLE_LINES, metavar="N",
                         help=f"how many of the last lines (default {CONSOLE_LINES})")  # fmt: skip
    console.add_argument("--follow", "-f", action="store_true",
                         help="keep printing new lines until Ctrl-C")  # fmt: skip


def run(channel: grpc.Channel, args: argparse.Namespace) -> int:
    """Run `vm <args.verb>` against the agent behind `channel`."""
    try:
        return _VERBS[args.verb](compute_pb2_grpc.ComputeStub(channel), channel, args)
    except SpecError as e:
        print(f"andromede: {e}", file=sys.stderr)
        return 2


def _create(stub: Any, channel: grpc.Channel, args: argparse.Namespace) -> int:
    vms = load_specs(args.file)
    request = compute_pb2.PutVmsRequest(request_id=_request_id(args), vms=vms)
    reply = stub.PutVms(request, timeout=args.timeout)
    if args.json:
        _print_json_line(reply)
    else:
        print(f"put {len(vms)} VM(s): accepted at generation {reply.generation} "
              f"(request_id {request.request_id})")  # fmt: skip
        print(_results(reply.results))
    return _wait(stub, channel, args, reply.generation, [vm.id for vm in vms])


def _list(stub: Any, channel: grpc.Channel, args: argparse.Namespace) -> int:
    filters = {"tenant_id": args.tenant_id} if args.tenant_id else {}
    records = list(_pages(stub, VM, args.timeout, filters, compute_pb2))
    if args.json:
        for record in records:
            _print_json_line(record)
    else:
        _print_table(VM, records)
    return 0


def _get(stub: Any, channel: grpc.Channel, args: argparse.Namespace) -> int:
    record = stub.GetVm(compute_pb2.GetVmRequest(id=args.id), timeout=args.timeout).vm
    if args.json:
        _print_json_line(record)
    else:
        _print_record(VM, record)
    return 0


def _action(stub: Any, channel: grpc.Channel, args: argparse.Namespace) -> int:
    request_id, verb, vm_id = _request_id(args), args.verb, args.id
    what = verb
    if verb == "start":
        request = compute_pb2.StartVmRequest(request_id=request_id, vm_id=vm_id)
    elif verb == "stop":
        request = compute_pb2.StopVmRequest(request_id=request_id, vm_id=vm_id, force=args.force)
        what += " --force" if args.force else ""
    elif verb == "pause":
        request = compute_pb2.PauseVmRequest(request_id=request_id, vm_id=vm_id)
    elif verb == "resume":
        request = compute_pb2.ResumeVmRequest(request_id=request_id, vm_id=vm_id)
    elif verb == "reboot":
        kind = compute_pb2.REBOOT_KIND_HARD if args.hard else compute_pb2.REBOOT_KIND_SOFT
        request = compute_pb2.RebootVmRequest(request_id=request_id, vm_id=vm_id, kind=kind)
        what += " --hard" if args.hard else ""
    elif verb == "attach-nic":
        model = _MODEL.values_by_name[_prefix(_MODEL) + args.model.upper()].number
        nic = compute_pb2.VmNic(id=args.nic_id, port_id=args.port_id, model=model)
        request = compute_pb2.AttachNicRequest(request_id=request_id, vm_id=vm_id, nic=nic)
        what += f" {args.nic_id} (port {args.port_id}, {args.model})"
    else:  # detach-nic
        request = compute_pb2.DetachNicRequest(request_id=request_id, vm_id=vm_id,
                                               nic_id=args.nic_id)  # fmt: skip
        what += f" {args.nic_id}"
    method = type(request).__name__.removesuffix("Request")  # StartVmRequest -> StartVm
    reply = getattr(stub, method)(request, timeout=args.timeout)
    if args.json:
        _print_json_line(reply)
    else:
        print(f"vm {vm_id}: {what}: accepted at generation {reply.generation} "
              f"(request_id {request_id})")  # fmt: skip
    return _wait(stub, channel, args, reply.generation, [vm_id])


def _delete(stub: Any, channel: grpc.Channel, args: argparse.Namespace) -> int:
    request = compute_pb2.DeleteVmsRequest(request_id=_request_id(args), ids=args.ids,
                                           allow_missing=args.allow_missing)  # fmt: skip
    reply = stub.DeleteVms(request, timeout=args.timeout)
    if args.json:
        _print_json_line(reply)
    else:
        print(f"delete {len(args.ids)} VM(s): accepted at generation {reply.generation} "
              f"(request_id {request.request_id})")  # fmt: skip
        print(_results(reply.results, missing=True))
    return _wait(stub, channel, args, reply.generation, list(args.ids))


def _results(results: Any, missing: bool = False) -> str:
    rows = [["id", "generation", "changed"]]
    for r in results:
        changed = "yes" if r.changed else ("no (no such VM)" if missing and not r.generation
                                           else "no (already so)")  # fmt: skip
        rows.append([r.id, str(r.generation), changed])
    return table(rows)


def _console(stub: Any, channel: grpc.Channel, args: argparse.Namespace) -> int:
    if args.lines < 0:
        print("andromede: --lines must be 0 or more", file=sys.stderr)
        return 2
    record = stub.GetVm(compute_pb2.GetVmRequest(id=args.id), timeout=args.timeout).vm
    path = record.runtime.serial_log_path
    if not path:
        print(f"andromede: vm {args.id}: the agent reports no serial log path "
              f"(runtime.serial_log_path is empty: it has not started this VM yet)",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        return _tail(Path(path), args.lines, args.follow)
    except OSError as e:
        why = e.strerror or str(e)
        hint = " (run as root or as a member of the agent's group)" if isinstance(
            e, PermissionError) else ""  # fmt: skip
        print(f"andromede: vm {args.id}: cannot read its serial console log {path}: {why}{hint}",
              file=sys.stderr)  # fmt: skip
        return 1


_VERBS = {"create": _create, "list": _list, "get": _get, "delete": _delete, "console": _console,
          **{verb: _action for verb in ("start", "stop", "pause", "resume", "reboot",
                                        "attach-nic", "detach-nic")}}  # fmt: skip


# --- parts ---------------------------------------------------------------------------------------


def _request_id(args: argparse.Namespace) -> str:
    return args.request_id or str(uuid.uuid4())


def _wait(stub: Any, channel: grpc.Channel, args: argparse.Namespace, generation: int,
          vm_ids: list[str]) -> int:  # fmt: skip
    """With --wait: poll the host's applied generation until it reaches `generation`; exit 1
    with the VMs' status if it does not within --timeout."""
    if not args.wait or generation == 0:  # 0: a delete of nothing, nothing to apply
        return 0
    node = node_pb2_grpc.NodeStub(channel)
    deadline = time.monotonic() + args.wait_timeout
    pause = _POLL_S[0]
    while True:
        info = node.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=args.timeout).info
        if info.applied_generation >= generation:
            if not args.json:
                print(f"applied: the host reached generation {info.applied_generation}")
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, _POLL_S[1])
    print(f"andromede: generation {generation} not applied within {args.wait_timeout:g} s "
          f"(the host has applied {info.applied_generation})", file=sys.stderr)  # fmt: skip
    for vm_id in vm_ids:
        try:
            record = stub.GetVm(compute_pb2.GetVmRequest(id=vm_id), timeout=args.timeout).vm
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            print(f"  vm {vm_id}: deleted, not yet removed from the host", file=sys.stderr)
            continue
        print(f"  vm {vm_id}: {_state(record)} at generation {record.meta.generation}, "
              f"run state {_run_state(record)}: {_message(record)}", file=sys.stderr)  # fmt: skip
    return 1


def _tail(path: Path, lines: int, follow: bool) -> int:
    """Print the last `lines` lines of `path`; with `follow`, then whatever is appended, until
    Ctrl-C (a file that shrinks or is replaced is read again from its start)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    f = open(path, "rb")  # noqa: SIM115 - reopened when replaced, closed below
    try:
        end = f.seek(0, os.SEEK_END)
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= lines:
            step = min(64 * 1024, start)
            start -= step
            f.seek(start)
            data = f.read(step) + data
        _write(decoder, b"".join(data.splitlines(keepends=True)[-lines:]) if lines else b"")
        inode, offset = os.fstat(f.fileno()).st_ino, end
        while follow:
            time.sleep(FOLLOW_POLL_S)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue  # being replaced (the VM recreated): wait for the new file
            if now.st_ino != inode or now.st_size < offset:
                f.close()
                f = open(path, "rb")  # noqa: SIM115
                inode, offset = os.fstat(f.fileno()).st_ino, 0
            f.seek(offset)
            chunk = f.read()
            offset += len(chunk)
            _write(decoder, chunk)
        return 0
    finally:
        f.close()


def _write(decoder: codecs.IncrementalDecoder, data: bytes) -> None:
    if data:
        sys.stdout.write(decoder.decode(data).replace("\r\n", "\n"))
        sys.stdout.flush()


# --- spec files ----------------------------------------------------------------------------------


def load_specs(path: Path) -> list[compute_pb2.Vm]:
    """The VMs of a spec file (TOML or JSON by extension); raises SpecError naming the file
    and the field at fault."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise SpecError(f"{path}: unknown file type {suffix or '(none)'!r}: use .toml or .json")
    try:
        text = path.read_bytes()
    except OSError as e:
        raise SpecError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text.decode()) if suffix == ".toml" else json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"{path}: not valid {suffix[1:].upper()}: {e}") from None
    if isinstance(data, list):
        items = [(f"[{i}]", item) for i, item in enumerate(data)]
    elif isinstance(data, dict) and "vm" in data:
        others = sorted(set(data) - {"vm"})
        if others or not isinstance(data["vm"], list):
            raise SpecError(f"{path}: vm: must be a list of VMs ([[vm]] tables), with every "
                            f"field inside them" + (f" (found also: {', '.join(others)})"
                                                    if others else ""))  # fmt: skip
        items = [(f"vm[{i}]", item) for i, item in enumerate(data["vm"])]
    else:
        items = [("", data)]
    if not items:
        raise SpecError(f"{path}: holds no VM")
    vms = []
    for where, item in items:
        vm = compute_pb2.Vm()
        try:
            _fill(vm, item, where)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None
        vms.append(vm)
    return vms


_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _fill(message: Message, data: Any, path: str) -> None:
    """Set `message`'s fields from a table of proto field names; `path` names it in errors."""
    name = message.DESCRIPTOR.name
    if not isinstance(data, dict):
        raise SpecError(f"{path or 'the file'}: must be a table of {name} fields, got "
                        f"{_kind(data)}")  # fmt: skip
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            raise SpecError(f"{where}: unknown field (a {name} has: {', '.join(fields)})")
        if field.is_repeated:
            if not isinstance(value, list):
                raise SpecError(f"{where}: must be a list, got {_kind(value)}")
            target = getattr(message, key)
            for i, item in enumerate(value):
                if field.message_type is not None:
                    _fill(target.add(), item, f"{where}[{i}]")
                else:
                    target.append(_scalar(field, item, f"{where}[{i}]"))
        elif field.message_type is not None:
            sub = getattr(message, key)
            sub.SetInParent()
            _fill(sub, value, where)
        else:
            setattr(message, key, _scalar(field, value, where))


def _scalar(field: FieldDescriptor, value: Any, where: str) -> Any:
    if field.enum_type is not None:
        choices = _choices(field.enum_type)
        if not isinstance(value, str):
            raise SpecError(f"{where}: must be one of: {', '.join(choices)}; got {_kind(value)}")
        prefix = _prefix(field.enum_type)
        wanted = value.upper()
        number = field.enum_type.values_by_name.get(prefix + wanted.removeprefix(prefix))
        if number is None or number.number == 0:
            raise SpecError(f"{where}: unknown value {value!r} (one of: {', '.join(choices)})")
        return number.number
    if field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: must be true or false, got {_kind(value)}")
        return value
    if field.type in _INTS:
        low, high = _INTS[field.type]
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(f"{where}: must be a whole number, got {_kind(value)}")
        if not low <= value <= high:
            raise SpecError(f"{where}: must be {low}..{high}, got {value}")
        return value
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SpecError(f"{where}: must be a number, got {_kind(value)}")
        return float(value)
    if not isinstance(value, str):
        raise SpecError(f"{where}: must be a string, got {_kind(value)}")
    return value.encode() if field.type == FieldDescriptor.TYPE_BYTES else value


def _kind(value: Any) -> str:
    """How a parsed TOML/JSON value is named in errors: "a list", "the string 'x'", "5"."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return json.dumps(value) if isinstance(value, bool | int | float) or value is None else (
        type(value).__name__)  # fmt: skip
