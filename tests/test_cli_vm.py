"""`andromede vm ...` (agent/cli_vm.py), run in-process through agent.cli.main against a real
server with the real Compute service on a real unix socket. No reconciler runs: VMs stay
PENDING, and what the test checks is what the CLI sends, prints and leaves in the store."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent import cli, cli_vm, server
from agent.compute.kvm import KvmResult
from agent.compute.service import Compute
from agent.compute.specs import Host
from agent.config import COMPUTE, DEFAULT_ALLOW, LOCAL, ServerConfig
from agent.store import FILENAME, Put, Store
from andromede.v1 import compute_pb2, network_pb2

pytestmark = pytest.mark.integration

WEB_TOML = """\
id = "web-1"
tenant_id = "blue"
vcpus = 1
memory_mb = 128
kernel = { path = "guest/vmlinuz" }
initrd = { path = "guest/initrd.gz" }
kernel_cmdline = "console=ttyS0 quiet andromede.ip=eth0=198.51.100.11/24"
[[nics]]
id = "nic0"
port_id = "blue-web-1"
"""


@dataclass
class Agent:
    socket: str
    store: Store
    runtimes: dict[str, compute_pb2.VmRuntime]
    dir: Path

    def vm(self, vm_id: str) -> compute_pb2.Vm | None:
        stored = self.store.get("vm", vm_id)
        return None if stored is None else compute_pb2.Vm.FromString(stored.spec)

    def port(self, port_id: str, vm_id: str, nic_id: str) -> None:
        """A stored port bound to the VM's NIC (the Network service is not served here)."""
        binding = network_pb2.VmNicBinding(vm_id=vm_id, nic_id=nic_id)
        port = network_pb2.Port(id=port_id, tenant_id="blue", network_id="net-blue",
                                mac="fa:16:3e:00:00:01", vm_nic=binding)  # fmt: skip
        self.store.commit([Put("port", port_id, port.SerializeToString(deterministic=True))],
                          f"port-{port_id}")  # fmt: skip

    def file(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)


@pytest.fixture
def agent(tmp_path):
    with capture_logs():  # the server's log lines would mix with the CLI's stdout
        yield from _agent(tmp_path)


def _agent(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "images" / "guest").mkdir(parents=True)
    store = Store(tmp_path / "state" / FILENAME)
    runtimes: dict[str, compute_pb2.VmRuntime] = {}
    compute = Compute(
        host=Host(cpus=2, memory_mb=4096, images_dir=tmp_path / "images"),
        runtimes=lambda: dict(runtimes),
        kvm=KvmResult(False, "test"),
    )
    socket = tmp_path / "agent.sock"
    config = ServerConfig(listen=(f"unix:{socket}",), insecure_unix=True,
                          allow={**DEFAULT_ALLOW, COMPUTE: (LOCAL,)})  # fmt: skip
    kinds = frozenset({"vm", "vm_reboot", "vm_stop", "node"})
    running = server.start(config, store, reconciled_kinds=kinds, compute=compute)
    try:
        yield Agent(str(socket), store, runtimes, tmp_path)
    finally:
        running.stop(0)
        store.close()


@pytest.fixture
def andromede(agent, capsys):
    """Run `andromede --unix <socket> ARGS...`: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--unix", agent.socket, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def web(agent, andromede):
    """web-1 of WEB_TOML, created, with its port."""
    agent.port("blue-web-1", "web-1", "nic0")
    code, out, err = andromede("vm", "create", agent.file("web.toml", WEB_TOML))
    assert code == 0, err
    return agent.vm("web-1")


def _generation(out: str) -> int:
    return int(out.split("accepted at generation ")[1].split()[0])


# --- create ------------------------------------------------------------------------------------


def test_create_from_toml_stores_the_vm_and_prints_the_results(agent, andromede):
    agent.port("blue-web-1", "web-1", "nic0")
    before = agent.store.generation()
    code, out, err = andromede("vm", "create", agent.file("web.toml", WEB_TOML))
    assert code == 0, err
    assert f"put 1 VM(s): accepted at generation {before + 1} (request_id " in out
    assert out.splitlines()[1].split() == ["id", "generation", "changed"]
    assert out.splitlines()[2].split() == ["web-1", str(before + 1), "yes"]
    vm = agent.vm("web-1")
    assert (vm.tenant_id, vm.vcpus, vm.memory_mb) == ("blue", 1, 128)
    assert vm.kernel.path == "guest/vmlinuz" and vm.initrd.path == "guest/initrd.gz"
    assert vm.kernel_cmdline.startswith("console=ttyS0")
    assert [(n.id, n.port_id) for n in vm.nics] == [("nic0", "blue-web-1")]
    # The same file again changes nothing and says so.
    code, out, _ = andromede("vm", "create", agent.file("web.toml", WEB_TOML))
    assert code == 0 and out.splitlines()[2].split() == ["web-1", str(before + 1), "no", "(already",
                                                         "so)"]  # fmt: skip


def test_create_from_json_and_toml_lists_with_enums_by_short_name(agent, andromede):
    vms = [
        {"id": "db-1", "tenant_id": "red", "vcpus": 2, "memory_mb": 256,
         "power_state": "Stopped", "accel": "TCG", "shutdown_timeout_s": 5, "numa_node": 0,
         "disks": [{"id": "root", "image": {"path": "debian.qcow2"}, "format": "qcow2",
                    "size_gib": 4}]},
        {"id": "db-2", "tenant_id": "red", "vcpus": 1, "memory_mb": 64, "hugepages": True},
    ]  # fmt: skip
    code, out, err = andromede("--json", "vm", "create", agent.file("db.json", json.dumps(vms)))
    assert code == 0, err
    reply = json.loads(out)
    assert [r["id"] for r in reply["results"]] == ["db-1", "db-2"]
    db1 = agent.vm("db-1")
    assert db1.power_state == compute_pb2.POWER_STATE_STOPPED
    assert db1.accel == compute_pb2.ACCEL_TCG and db1.shutdown_timeout_s == 5
    assert db1.HasField("numa_node") and db1.numa_node == 0
    assert db1.disks[0].format == compute_pb2.IMAGE_FORMAT_QCOW2 and db1.disks[0].size_gib == 4
    assert agent.vm("db-2").hugepages

    toml = ('[[vm]]\nid = "app-1"\ntenant_id = "green"\nvcpus = 1\nmemory_mb = 64\n'
            'power_state = "paused"\n'
            '[[vm]]\nid = "app-2"\ntenant_id = "green"\nvcpus = 1\nmemory_mb = 64\n')  # fmt: skip
    code, out, err = andromede("vm", "create", agent.file("apps.toml", toml))
    assert code == 0, err
    assert "put 2 VM(s)" in out
    assert agent.vm("app-1").power_state == compute_pb2.POWER_STATE_PAUSED

    code, out, _ = andromede("vm", "list", "--tenant", "green")
    rows = [line.split() for line in out.splitlines()]
    assert [row[0] for row in rows[1:]] == ["app-1", "app-2"]
    assert rows[1][:3] == ["app-1", "green", "paused"] and rows[2][2] == "running"


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("web.toml", WEB_TOML.replace('port_id = "blue-web-1"', 'port_id = "blue-web-1"\n'
                                      'model = "virtoi"'),
         "web.toml: nics[0].model: unknown value 'virtoi' (one of: virtio, e1000e)"),
        ("web.toml", WEB_TOML.replace("vcpus = 1", "vcpu = 1"),
         "web.toml: vcpu: unknown field (a Vm has: id, tenant_id, vcpus, "),
        ("web.toml", WEB_TOML.replace("vcpus = 1", 'vcpus = "1"'),
         "web.toml: vcpus: must be a whole number, got the string '1'"),
        ("web.toml", WEB_TOML.replace("memory_mb = 128", "memory_mb = -1"),
         "web.toml: memory_mb: must be 0..18446744073709551615, got -1"),
        ("web.toml", WEB_TOML.replace('kernel = { path = "guest/vmlinuz" }', 'kernel = "vmlinuz"'),
         "web.toml: kernel: must be a table of ImageRef fields, got the string 'vmlinuz'"),
        ("web.toml", WEB_TOML.replace("[[nics]]", "[nics]"),
         "web.toml: nics: must be a list, got a table"),
        ("web.toml", "id = \n", "web.toml: not valid TOML: "),
        ("web.json", '{"id": "web-1", "power_state": 1}',
         "web.json: power_state: must be one of: running, stopped, paused; got 1"),
        ("web.json", '[{"id": "a"}, {"id": "b", "accel": "hvf"}]',
         "web.json: [1].accel: unknown value 'hvf' (one of: kvm, tcg)"),
        ("web.toml", '[[vm]]\nid = "a"\n[[vm]]\nid = "b"\nhugepages = "yes"\n',
         "web.toml: vm[1].hugepages: must be true or false, got the string 'yes'"),
        ("web.toml", 'id = "a"\n[[vm]]\nid = "b"\n',
         "web.toml: vm: must be a list of VMs ([[vm]] tables), with every field inside them "
         "(found also: id)"),
        ("web.toml", "vm = []\n", "web.toml: holds no VM"),
        ("web.yaml", "id: web-1\n", "web.yaml: unknown file type '.yaml': use .toml or .json"),
    ],
)  # fmt: skip
def test_a_bad_spec_file_is_refused_naming_the_file_and_field(agent, andromede, name, text,
                                                              error):  # fmt: skip
    before = agent.store.generation()
    code, out, err = andromede("vm", "create", agent.file(name, text))
    assert code == 2
    assert out == ""
    assert err.startswith(f"andromede: {agent.dir}/{error}"), err  # the path as given
    assert agent.store.generation() == before and agent.store.objects("vm") == []


def test_a_missing_spec_file_is_a_usage_error(agent, andromede):
    code, _, err = andromede("vm", "create", str(agent.dir / "nope.toml"))
    assert code == 2
    assert f"{agent.dir / 'nope.toml'}: cannot read it: No such file or directory" in err


def test_what_the_service_refuses_prints_the_code_and_field(agent, andromede):
    code, out, err = andromede("vm", "create", agent.file("web.toml", WEB_TOML))  # no port yet
    assert code == 1 and out == ""
    assert err.startswith("andromede: FAILED_PRECONDITION: ") and "nics[0].port_id" in err
    code, _, err = andromede(
        "vm", "create", agent.file("big.toml", WEB_TOML.replace("vcpus = 1", "vcpus = 0")))
    assert code == 1 and "INVALID_ARGUMENT" in err and "vcpus" in err
    assert agent.store.objects("vm") == []


# --- list and get --------------------------------------------------------------------------------


def test_list_and_get_show_the_spec_status_and_runtime(agent, andromede, web):
    code, out, err = andromede("vm", "list")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["id", "tenant", "power", "run", "state", "qemu", "pid", "accel",
                              "nics", "state", "message"]  # fmt: skip
    assert row.split() == ["web-1", "blue", "running", "-", "-", "-", "auto", "blue-web-1",
                           "pending", "-"]  # fmt: skip

    log = agent.dir / "serial.log"
    agent.runtimes["web-1"] = compute_pb2.VmRuntime(
        run_state=compute_pb2.RUN_STATE_RUNNING, qemu_status="running", pid=4242,
        accel=compute_pb2.ACCEL_TCG, serial_log_path=str(log), crash_restarts=2,
        nics=[compute_pb2.VmNicRuntime(nic_id="nic0", port_id="blue-web-1",
                                       interface_name="tap3f2a9c1d-7b", mac="fa:16:3e:00:00:01")],
    )  # fmt: skip
    agent.runtimes["web-1"].started_at.FromSeconds(1_700_000_000)
    _, out, _ = andromede("vm", "list")
    assert out.splitlines()[1].split() == ["web-1", "blue", "running", "running", "running",
                                           "4242", "tcg", "blue-web-1", "pending", "-"]  # fmt: skip

    code, out, err = andromede("vm", "get", "web-1")
    assert code == 0, err
    lines = out.splitlines()
    assert "id:" in lines[0] and "web-1" in lines[0]
    assert any(line.startswith("size:") and "1 vCPU, 128 MiB" in line for line in lines)
    assert any("guest/vmlinuz, initrd guest/initrd.gz" in line for line in lines)
    assert ("  nic0: port blue-web-1, virtio, tap tap3f2a9c1d-7b, mac fa:16:3e:00:00:01, rx 0 "
            "packets 0 B, tx 0 packets 0 B") in lines
    assert any(line.startswith("process:") and "pid 4242, started 2023-11-14T22:13:20Z" in line
               for line in lines)  # fmt: skip
    assert any(line.startswith("serial log:") and str(log) in line for line in lines)
    assert any(line.startswith("crash restarts:") and line.endswith(" 2") for line in lines)
    generation = agent.store.get("vm", "web-1").generation
    assert lines[-1].startswith("status:") and f"generation {generation} (request " in lines[-1]

    _, out, _ = andromede("--json", "vm", "get", "web-1")
    record = json.loads(out)
    assert record["spec"]["nics"] == [{"id": "nic0", "portId": "blue-web-1"}]
    assert record["runtime"]["nics"][0]["interfaceName"] == "tap3f2a9c1d-7b"
    assert record["status"]["state"] == "APPLY_STATE_PENDING"


def test_list_json_prints_one_object_per_vm_over_every_page(agent, andromede):
    vms = [{"id": f"vm-{i:04d}", "tenant_id": "t", "vcpus": 1, "memory_mb": 64}
           for i in range(1_005)]  # more than one page of 1,000  # fmt: skip
    code, _, err = andromede("vm", "create", agent.file("many.json", json.dumps({"vm": vms})))
    assert code == 0, err
    code, out, _ = andromede("--json", "vm", "list")
    assert code == 0
    ids = [json.loads(line)["spec"]["id"] for line in out.splitlines()]
    assert ids == [vm["id"] for vm in vms]


def test_get_of_an_unknown_vm_is_not_found(andromede):
    code, out, err = andromede("vm", "get", "nope")
    assert code == 1 and out == ""
    assert err.startswith("andromede: NOT_FOUND: ")


def test_list_of_no_vms(andromede):
    assert andromede("vm", "list")[:2] == (0, "no vm objects\n")


# --- actions -------------------------------------------------------------------------------------


def test_power_actions_print_generations_and_change_the_spec(agent, andromede, web):
    assert web.power_state == compute_pb2.POWER_STATE_UNSPECIFIED  # running
    steps = [
        (("stop", "web-1"), compute_pb2.POWER_STATE_STOPPED, "vm web-1: stop: accepted"),
        (("start", "web-1"), compute_pb2.POWER_STATE_RUNNING, "vm web-1: start: accepted"),
        (("pause", "web-1"), compute_pb2.POWER_STATE_PAUSED, "vm web-1: pause: accepted"),
        (("resume", "web-1"), compute_pb2.POWER_STATE_RUNNING, "vm web-1: resume: accepted"),
        (("stop", "web-1", "--force"), compute_pb2.POWER_STATE_STOPPED,
         "vm web-1: stop --force: accepted"),
    ]  # fmt: skip
    last = agent.store.get("vm", "web-1").generation
    for args, power, said in steps:
        code, out, err = andromede("vm", *args)
        assert code == 0, err
        assert out.startswith(said), out
        generation = _generation(out)
        assert generation > last
        assert agent.vm("web-1").power_state == power
        last = generation
        if "--force" not in args:
            assert agent.store.get("vm", "web-1").generation == generation
    # A forced stop is the VM's change and a vm_stop object after it: the answer is the latter.
    stored = agent.store.get("vm_stop", "web-1")
    assert compute_pb2.StopVmRequest.FromString(stored.spec).force
    assert stored.generation == last == agent.store.get("vm", "web-1").generation + 1

    # Resume of a stopped VM is refused by the service; the CLI prints the code.
    code, _, err = andromede("vm", "resume", "web-1")
    assert code == 1 and "FAILED_PRECONDITION" in err and "use StartVm" in err


def test_reboot_is_stored_once_per_request_id(agent, andromede, web):
    code, out, err = andromede("vm", "reboot", "web-1", "--hard", "--request-id", "reboot-1")
    assert code == 0, err
    assert out == (f"vm web-1: reboot --hard: accepted at generation {_generation(out)} "
                   f"(request_id reboot-1)\n")  # fmt: skip
    reboot = agent.store.get("vm_reboot", "web-1")
    assert reboot.generation == _generation(out)
    assert compute_pb2.RebootVmRequest.FromString(reboot.spec).kind == compute_pb2.REBOOT_KIND_HARD
    # The operator's retry with the same request id replays: same generation, nothing new.
    code, again, _ = andromede("--json", "vm", "reboot", "web-1", "--hard",
                               "--request-id", "reboot-1")  # fmt: skip
    assert code == 0 and int(json.loads(again)["generation"]) == reboot.generation
    assert agent.store.get("vm_reboot", "web-1").generation == reboot.generation
    # A new one (a new UUID) is a new reboot, SOFT by default.
    code, out, _ = andromede("vm", "reboot", "web-1")
    assert code == 0 and _generation(out) > reboot.generation
    assert compute_pb2.RebootVmRequest.FromString(
        agent.store.get("vm_reboot", "web-1").spec).kind == compute_pb2.REBOOT_KIND_SOFT
    # Only a running VM reboots.
    andromede("vm", "stop", "web-1")
    code, _, err = andromede("vm", "reboot", "web-1")
    assert code == 1 and "FAILED_PRECONDITION" in err


def test_attach_and_detach_nic(agent, andromede, web):
    agent.port("blue-web-2", "web-1", "nic1")
    code, out, err = andromede("vm", "attach-nic", "web-1", "nic1", "blue-web-2",
                               "--model", "e1000e")  # fmt: skip
    assert code == 0, err
    assert out.startswith("vm web-1: attach-nic nic1 (port blue-web-2, e1000e): accepted at ")
    nics = agent.vm("web-1").nics
    assert [(n.id, n.port_id, n.model) for n in nics] == [
        ("nic0", "blue-web-1", compute_pb2.NIC_MODEL_UNSPECIFIED),
        ("nic1", "blue-web-2", compute_pb2.NIC_MODEL_E1000E),
    ]
    _, out, _ = andromede("vm", "list")
    assert "blue-web-1,blue-web-2" in out.splitlines()[1]

    code, out, err = andromede("--json", "vm", "detach-nic", "web-1", "nic0")
    assert code == 0, err
    assert int(json.loads(out)["generation"]) == agent.store.get("vm", "web-1").generation
    assert [n.id for n in agent.vm("web-1").nics] == ["nic1"]

    code, _, err = andromede("vm", "detach-nic", "web-1", "nic0")
    assert code == 1 and "NOT_FOUND" in err and "nic_id" in err
    code, _, err = andromede("vm", "attach-nic", "web-1", "nic1", "blue-web-2")
    assert code == 1 and "ALREADY_EXISTS" in err


def test_actions_on_an_unknown_vm_are_not_found(andromede):
    for args in (("start", "nope"), ("stop", "nope", "--force"), ("detach-nic", "nope", "n")):
        code, out, err = andromede("vm", *args)
        assert code == 1 and out == "" and "NOT_FOUND" in err and "vm_id" in err


def test_delete(agent, andromede, web):
    andromede("vm", "reboot", "web-1")
    code, out, err = andromede("vm", "delete", "web-1")
    assert code == 0, err
    assert out.startswith("delete 1 VM(s): accepted at generation ")
    assert out.splitlines()[2].split() == ["web-1", str(_generation(out)), "yes"]
    assert agent.vm("web-1") is None and agent.store.get("vm_reboot", "web-1") is None

    code, _, err = andromede("vm", "delete", "web-1")
    assert code == 1 and "NOT_FOUND" in err
    code, out, err = andromede("vm", "delete", "web-1", "--allow-missing")
    assert code == 0, err
    assert out.splitlines()[2].split() == ["web-1", "0", "no", "(no", "such", "VM)"]
    code, out, _ = andromede("--json", "vm", "delete", "web-1", "--allow-missing", "--wait")
    assert code == 0  # nothing deleted: nothing to wait for
    assert json.loads(out)["results"] == [{"id": "web-1"}]


# --- --wait --------------------------------------------------------------------------------------


def test_wait_times_out_with_the_vm_status(agent, andromede, web):
    code, out, err = andromede("vm", "stop", "web-1", "--wait", "--timeout", "0.3")
    assert code == 1
    generation = _generation(out)
    assert f"andromede: generation {generation} not applied within 0.3 s (the host has " in err
    assert f"  vm web-1: pending at generation {generation}, run state -: -" in err


def test_wait_returns_once_the_host_has_applied_the_generation(agent, andromede, web):
    done = threading.Event()

    def reconciler() -> None:  # acks whatever is stored, as a pass that applied it would
        while not done.wait(0.05):
            agent.store.record([], agent.store.generation())

    thread = threading.Thread(target=reconciler, daemon=True)
    thread.start()
    try:
        code, out, err = andromede("vm", "pause", "web-1", "--wait", "--timeout", "10")
        assert code == 0, err
        generation = _generation(out)
        applied = int(out.splitlines()[-1].removeprefix("applied: the host reached generation "))
        assert applied >= generation
        code, out, err = andromede("--json", "vm", "delete", "web-1", "--wait")
        assert code == 0, err
        assert len(out.splitlines()) == 1 and json.loads(out)["generation"]  # JSON stays JSON
    finally:
        done.set()
        thread.join(timeout=5)


# --- console -------------------------------------------------------------------------------------


def test_console_prints_the_last_lines_of_the_serial_log(agent, andromede, web):
    log = agent.dir / "serial.log"
    log.write_bytes(b"".join(b"line %d\r\n" % i for i in range(1, 101)))
    agent.runtimes["web-1"] = compute_pb2.VmRuntime(serial_log_path=str(log))
    code, out, err = andromede("vm", "console", "web-1", "--lines", "3")
    assert code == 0, err
    assert out == "line 98\nline 99\nline 100\n"
    _, out, _ = andromede("vm", "console", "web-1")
    assert out.splitlines() == [f"line {i}" for i in range(61, 101)]  # 40 by default
    assert andromede("vm", "console", "web-1", "-n", "0")[:2] == (0, "")
    log.write_bytes(b"no newline at the end")
    assert andromede("vm", "console", "web-1", "-n", "5")[1] == "no newline at the end"


def test_console_follow_prints_what_is_appended_until_ctrl_c(agent, andromede, web, monkeypatch):
    log = agent.dir / "serial.log"
    log.write_text("booting\n")
    agent.runtimes["web-1"] = compute_pb2.VmRuntime(serial_log_path=str(log))
    pauses = []

    def sleep(seconds: float) -> None:  # the follow loop's pause: the guest writes meanwhile
        pauses.append(seconds)
        if len(pauses) == 1:
            with log.open("a") as f:
                f.write("login: ")
        elif len(pauses) == 2:
            log.write_text("rebooted\n")  # truncated and rewritten: read from the start
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_vm.time, "sleep", sleep)
    code, out, _ = andromede("vm", "console", "web-1", "--follow")
    assert code == 130
    assert out == "booting\nlogin: rebooted\n"


def test_console_without_a_readable_log_says_where_it_looked(agent, andromede, web):
    code, out, err = andromede("vm", "console", "web-1")
    assert code == 1 and out == ""
    assert "vm web-1: the agent reports no serial log path" in err

    missing = agent.dir / "vms" / "web-1" / "serial.log"
    agent.runtimes["web-1"] = compute_pb2.VmRuntime(serial_log_path=str(missing))
    code, out, err = andromede("vm", "console", "web-1")
    assert code == 1 and out == ""
    assert err == (f"andromede: vm web-1: cannot read its serial console log {missing}: "
                   f"No such file or directory\n")  # fmt: skip
