"""VMs end to end: real agents in simulated hosts run real QEMU guests (the test guest, under
TCG), wired into the VXLAN overlay by their own network side, driven only over gRPC; the
guests' own network stacks ping each other; real crashes of the agent and of QEMU.

One two-host lab with four guests (two tenants, the same addresses) serves the whole module;
the tests that kill things come last and leave the lab as they found it. The fixture removes
every namespace and ends every QEMU process the agents started, also on failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import grpc
import psutil
import pytest

from agent.compute.taps import tap_name
from agent.lab.hosts import Lab, missing_tools
from agent.lab.probes import parse_ping
from agent.lab.scenario import Scenario, TenantVM, wait_for
from agent.lab.vms import LabGuest
from andromede.v1 import common_pb2, compute_pb2, network_pb2, node_pb2

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab() -> Iterator[Scenario]:
    missing = missing_tools()
    if missing:
        pytest.fail(f"the lab needs {missing}: run scripts/setup.sh", pytrace=False)
    scenario = Scenario.build(Lab(), hosts=2, guests=True)
    try:
        scenario.apply()
        for v in scenario.vms:
            v.vm.wait_booted(timeout=90)
        yield scenario
    finally:
        scenario.close()


def guest(lab: Scenario, tenant: str, host: str) -> LabGuest:
    vm = next(v.vm for v in lab.vms if v.tenant == tenant and v.host == host)
    assert isinstance(vm, LabGuest)
    return vm


def tenant_vm(lab: Scenario, tenant: str, host: str) -> TenantVM:
    return next(v for v in lab.vms if v.tenant == tenant and v.host == host)


def record(lab: Scenario, host: str, vm_id: str) -> compute_pb2.VmRecord:
    return lab.agents[host].compute().GetVm(compute_pb2.GetVmRequest(id=vm_id), timeout=10).vm


def wait_applied(lab: Scenario, host: str, generation: int, timeout: float = 60.0) -> None:
    lab.agents[host].wait_applied(generation, timeout=timeout)


def qemu_pids(vm_id: str) -> list[int]:
    """The QEMU processes running for `vm_id` on this machine (any host of the lab)."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(a.startswith(f"guest={vm_id},") for a in (p.info["cmdline"] or []))]  # fmt: skip


def action(lab: Scenario, host: str, method: str, request: object) -> int:
    answer = getattr(lab.agents[host].compute(), method)(request, timeout=10)
    return answer.generation


# --- the overlay, seen from inside the guests --------------------------------------------------


def test_guests_ping_each_other_across_hosts_and_the_other_tenant_with_the_same_ips_sees_nothing(
    lab: Scenario,
) -> None:
    checks = lab.pings(count=3)
    assert len(checks) == 4
    for check in checks:
        assert check.received >= 2, check  # the very first packet may wait for the tunnel's ARP
        assert check.leaked == 0, f"{check}: the other tenant's VM got ICMP"
    again = guest(lab, "blue", "h1").ping(guest(lab, "blue", "h2").ip, count=3)
    assert again.received == 3, again.output


def test_a_running_vm_reports_its_qemu_its_tap_and_its_serial_log(lab: Scenario) -> None:
    vm = record(lab, "h1", "blue-h1")
    runtime = vm.runtime
    assert runtime.run_state == compute_pb2.RUN_STATE_RUNNING
    assert runtime.qemu_status == "running"
    assert runtime.accel == compute_pb2.ACCEL_TCG  # KVM does not run guests on these machines
    assert runtime.pid in qemu_pids("blue-h1")
    assert runtime.nics[0].interface_name == tap_name("blue-h1", "nic0")
    assert runtime.nics[0].mac == tenant_vm(lab, "blue", "h1").vm.mac
    assert "ANDROMEDE-GUEST-READY" in open(runtime.serial_log_path).read()
    # What it uses, read at the call: QEMU's CPU time and memory, the NIC's counters.
    assert runtime.cpu_seconds > 0 and runtime.memory_rss_bytes > 50 << 20
    assert runtime.nics[0].rx_packets > 0 and runtime.nics[0].tx_packets > 0  # the pings above
    assert vm.status.state == common_pb2.APPLY_STATE_APPLIED
    # QEMU runs unprivileged, sandboxed, in a session of its own (not the agent's group).
    process = psutil.Process(runtime.pid)
    assert process.uids().real != 0
    assert "-sandbox" in process.cmdline()
    assert os.getsid(runtime.pid) == runtime.pid
    caps = lab.agents["h1"].node().GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=5).info.capabilities
    assert not caps.kvm_usable and "KVM" in caps.kvm_detail and caps.qemu_version


def test_pause_stops_the_traffic_and_resume_restores_it(lab: Scenario) -> None:
    source, target = guest(lab, "blue", "h1"), guest(lab, "blue", "h2")
    generation = action(lab, "h2", "PauseVm", compute_pb2.PauseVmRequest(
        request_id=lab.request_id(), vm_id=target.id))  # fmt: skip
    wait_applied(lab, "h2", generation)
    assert record(lab, "h2", target.id).runtime.run_state == compute_pb2.RUN_STATE_PAUSED
    paused = source.ping(target.ip, count=3, interval=0.2)
    assert paused.received == 0, paused.output
    generation = action(lab, "h2", "ResumeVm", compute_pb2.ResumeVmRequest(
        request_id=lab.request_id(), vm_id=target.id))  # fmt: skip
    wait_applied(lab, "h2", generation)
    resumed = source.ping(target.ip, count=3, interval=0.2)
    assert resumed.received == 3, resumed.output


def test_a_hot_plugged_nic_works_inside_the_guest_and_unplug_removes_it(lab: Scenario) -> None:
    # A second network for the blue tenant on both hosts, a port for each blue VM's nic1.
    ports = {}
    for host in ("h1", "h2"):
        network = lab.agents[host].network()
        network.PutNetworks(network_pb2.PutNetworksRequest(request_id=lab.request_id(), networks=[
            network_pb2.TenantNetwork(id="net-blue2", tenant_id="blue", vni=1003)]), timeout=10)  # fmt: skip
        vm = guest(lab, "blue", host)
        ports[host] = network_pb2.Port(
            id=f"blue2-{host}", tenant_id="blue", network_id="net-blue2",
            mac=vm.mac[:-2] + "02", fixed_ips=[vm.hotplug_ip_cidr.split("/")[0]],
            port_security_enabled=False, vm_nic=network_pb2.VmNicBinding(vm_id=vm.id, nic_id="nic1"),
        )  # fmt: skip
    for host, other in (("h1", "h2"), ("h2", "h1")):
        network = lab.agents[host].network()
        network.PutPorts(network_pb2.PutPortsRequest(request_id=lab.request_id(), ports=[ports[host]]),
                         timeout=10)  # fmt: skip
        peer = ports[other]
        network.PutL2Entries(network_pb2.PutL2EntriesRequest(request_id=lab.request_id(), l2_entries=[
            network_pb2.L2Entry(id=peer.id, network_id="net-blue2", mac=peer.mac,
                                ip_addresses=list(peer.fixed_ips), tunnel_endpoint_id=other)]),
                             timeout=10)  # fmt: skip
    for host in ("h1", "h2"):
        vm = guest(lab, "blue", host)
        generation = action(lab, host, "AttachNic", compute_pb2.AttachNicRequest(
            request_id=lab.request_id(), vm_id=vm.id,
            nic=compute_pb2.VmNic(id="nic1", port_id=ports[host].id)))  # fmt: skip
        wait_applied(lab, host, generation)
    source, target = guest(lab, "blue", "h1"), guest(lab, "blue", "h2")
    target_ip = target.hotplug_ip_cidr.split("/")[0]
    for vm in (source, target):
        wait_for(lambda: vm.hotplug_ip_cidr in vm.run("ip -o addr show dev eth1")[1], 15,
                 f"eth1 up in {vm.id}")  # fmt: skip
    # The first packets of a new path wait for ARP, in the guest and in the tunnel.
    wait_for(lambda: source.ping(target_ip, count=1).received == 1, 15, "a first answer on eth1")
    result = source.ping(target_ip, count=5, interval=0.2)
    assert result.received == 5, result.output
    assert len(record(lab, "h2", target.id).runtime.nics) == 2

    generation = action(lab, "h2", "DetachNic", compute_pb2.DetachNicRequest(
        request_id=lab.request_id(), vm_id=target.id, nic_id="nic1"))  # fmt: skip
    wait_applied(lab, "h2", generation)
    status, output = target.run("ls /sys/class/net")
    assert status == 0 and "eth1" not in output.split(), output
    assert source.ping(target_ip, count=2, interval=0.2).received == 0
    assert len(record(lab, "h2", target.id).runtime.nics) == 1
    tap = tap_name(target.id, "nic1")
    assert lab.lab.hosts["h2"].run(["ip", "link", "show", tap], check=False).returncode != 0
    # Put things back as they were: detach h1's nic1 too, drop the second network's objects.
    vm1 = guest(lab, "blue", "h1")
    generation = action(lab, "h1", "DetachNic", compute_pb2.DetachNicRequest(
        request_id=lab.request_id(), vm_id=vm1.id, nic_id="nic1"))  # fmt: skip
    wait_applied(lab, "h1", generation)
    for host, other in (("h1", "h2"), ("h2", "h1")):
        network = lab.agents[host].network()
        network.DeleteL2Entries(network_pb2.DeleteL2EntriesRequest(
            request_id=lab.request_id(), ids=[ports[other].id]), timeout=10)  # fmt: skip
        network.DeletePorts(network_pb2.DeletePortsRequest(
            request_id=lab.request_id(), ids=[ports[host].id]), timeout=10)  # fmt: skip
        answer = network.DeleteNetworks(network_pb2.DeleteNetworksRequest(
            request_id=lab.request_id(), ids=["net-blue2"]), timeout=10)  # fmt: skip
        wait_applied(lab, host, answer.generation)


def test_reboot_reboots_once_and_a_replayed_reboot_does_nothing(lab: Scenario) -> None:
    vm = guest(lab, "red", "h1")
    boots, pid = vm.boots(), record(lab, "h1", vm.id).runtime.pid
    request = compute_pb2.RebootVmRequest(request_id=lab.request_id(), vm_id=vm.id)
    generation = action(lab, "h1", "RebootVm", request)
    wait_applied(lab, "h1", generation)
    vm.wait_booted(boots + 1, timeout=60)
    assert "ANDROMEDE-POWER-BUTTON" in vm.serial_log.read_text()  # soft: through the guest
    assert action(lab, "h1", "RebootVm", request) == generation  # the replay
    time.sleep(3)
    assert vm.boots() == boots + 1
    assert record(lab, "h1", vm.id).runtime.pid == pid  # the same QEMU, reset
    hard = action(lab, "h1", "RebootVm", compute_pb2.RebootVmRequest(
        request_id=lab.request_id(), vm_id=vm.id, kind=compute_pb2.REBOOT_KIND_HARD))  # fmt: skip
    assert hard > generation
    wait_applied(lab, "h1", hard)
    vm.wait_booted(boots + 2, timeout=60)


def test_stop_powers_the_guest_down_and_one_that_ignores_it_is_stopped_by_force(lab: Scenario) -> None:
    agent = lab.agents["h2"]
    vm = guest(lab, "red", "h2")
    started = time.monotonic()
    generation = action(lab, "h2", "StopVm", compute_pb2.StopVmRequest(
        request_id=lab.request_id(), vm_id=vm.id))  # fmt: skip
    wait_applied(lab, "h2", generation)
    assert time.monotonic() - started < 8  # the guest's ACPI handler, not the 10 s timeout
    assert "ANDROMEDE-POWER-BUTTON" in vm.serial_log.read_text()
    stopped = record(lab, "h2", vm.id)
    assert stopped.runtime.run_state == compute_pb2.RUN_STATE_STOPPED and stopped.runtime.pid == 0
    assert qemu_pids(vm.id) == []
    # Start it again, this time with a guest that ignores the power button (3 s timeout).
    spec = stopped.spec
    spec.kernel_cmdline += " andromede.acpi=off"
    spec.shutdown_timeout_s = 3
    spec.power_state = compute_pb2.POWER_STATE_RUNNING
    boots = vm.boots()
    answer = agent.compute().PutVms(compute_pb2.PutVmsRequest(request_id=lab.request_id(), vms=[spec]),
                                    timeout=10)  # fmt: skip
    wait_applied(lab, "h2", answer.generation)
    vm.wait_booted(boots + 1)
    started = time.monotonic()
    generation = action(lab, "h2", "StopVm", compute_pb2.StopVmRequest(
        request_id=lab.request_id(), vm_id=vm.id))  # fmt: skip
    wait_applied(lab, "h2", generation)
    took = time.monotonic() - started
    assert 3 <= took < 8, took
    assert qemu_pids(vm.id) == []
    assert "vm.stop_forced" in agent.log_tail(200_000)
    # Back to the lab's spec, running.
    spec.kernel_cmdline = spec.kernel_cmdline.replace(" andromede.acpi=off", "")
    spec.shutdown_timeout_s = 10
    answer = agent.compute().PutVms(compute_pb2.PutVmsRequest(request_id=lab.request_id(), vms=[spec]),
                                    timeout=10)  # fmt: skip
    wait_applied(lab, "h2", answer.generation)
    vm.wait_booted(boots + 2)


# --- bad requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        (lambda vm: setattr(vm, "memory_mb", 0), grpc.StatusCode.INVALID_ARGUMENT, "memory_mb"),
        (lambda vm: setattr(vm, "memory_mb", 16_000_000), grpc.StatusCode.FAILED_PRECONDITION, "memory_mb"),
        (lambda vm: setattr(vm, "vcpus", 64), grpc.StatusCode.FAILED_PRECONDITION, "vcpus"),
        (lambda vm: vm.kernel.CopyFrom(compute_pb2.ImageRef(path="../../../boot/vmlinuz")),
         grpc.StatusCode.INVALID_ARGUMENT, "kernel.path"),
        (lambda vm: vm.kernel.CopyFrom(compute_pb2.ImageRef(path="linked/vmlinuz")),
         grpc.StatusCode.INVALID_ARGUMENT, "kernel.path"),
        (lambda vm: vm.nics[0].CopyFrom(compute_pb2.VmNic(id="nic0", port_id="no-such-port")),
         grpc.StatusCode.FAILED_PRECONDITION, "nics[0].port_id"),
        (lambda vm: vm.nics[0].CopyFrom(compute_pb2.VmNic(id="nic0", port_id="red-h1")),
         grpc.StatusCode.FAILED_PRECONDITION, "nics[0].port_id"),  # bound to red-h1's NIC
    ],
)
def test_a_bad_vm_is_refused_with_the_protos_code_and_starts_nothing(
    lab: Scenario, change, code: grpc.StatusCode, field: str
) -> None:
    images = lab.lab.root / "images"
    if not (images / "linked").exists():
        (images / "linked").symlink_to(images / "guest")
    vm = guest(lab, "blue", "h1").spec(lab.images, "blue-h1", "blue")
    vm.id = "bad-vm"
    change(vm)
    compute = lab.agents["h1"].compute()
    with pytest.raises(grpc.RpcError) as caught:
        compute.PutVms(compute_pb2.PutVmsRequest(request_id=lab.request_id(), vms=[vm]), timeout=10)
    assert caught.value.code() == code, caught.value.details()
    assert field in caught.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        compute.GetVm(compute_pb2.GetVmRequest(id="bad-vm"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert qemu_pids("bad-vm") == []


def test_a_duplicate_id_in_one_request_is_refused_and_starts_nothing(lab: Scenario) -> None:
    vm = guest(lab, "blue", "h1").spec(lab.images, "blue-h1", "blue")
    vm.id = "dup-vm"
    vm.ClearField("nics")
    with pytest.raises(grpc.RpcError) as caught:
        lab.agents["h1"].compute().PutVms(compute_pb2.PutVmsRequest(
            request_id=lab.request_id(), vms=[vm, vm]), timeout=10)  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "vms[1]" in caught.value.details() or "distinct" in caught.value.details()
    assert qemu_pids("dup-vm") == []


# --- crashes (last: they restart things) -------------------------------------------------------


def test_agent_kill_9_and_restart_leave_the_vms_running_readopted_and_reachable_with_no_ping_lost(
    lab: Scenario,
) -> None:
    source, target = guest(lab, "blue", "h2"), guest(lab, "blue", "h1")
    agent = lab.agents["h1"]
    pids = {v.id: record(lab, "h1", v.id).runtime.pid for v in (target, guest(lab, "red", "h1"))}
    status, _ = source.run(f"ping -c 60 -i 0.1 -W 1 {target.ip} > /tmp/ping.txt 2>&1 &")
    assert status == 0
    time.sleep(1.0)
    agent.kill()
    time.sleep(0.5)
    agent.start()
    info = agent.node().GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=5).info
    wait_applied(lab, "h1", info.desired_generation)
    wait_for(lambda: "packets transmitted" in source.run("cat /tmp/ping.txt")[1], 15, "the ping to end")
    result = parse_ping(source.read("/tmp/ping.txt"))
    assert result.sent == 60 and result.lost == 0, result.output
    for vm_id, pid in pids.items():
        runtime = record(lab, "h1", vm_id).runtime
        assert runtime.pid == pid and runtime.run_state == compute_pb2.RUN_STATE_RUNNING
    assert '"vm.adopted"' in agent.log_tail(200_000)


def test_a_qemu_killed_is_reported_and_started_again(lab: Scenario) -> None:
    vm = guest(lab, "red", "h2")
    before = record(lab, "h2", vm.id).runtime
    boots = vm.boots()
    # red-h2 was started by this agent (the stop test above), so it sees the exit status.
    psutil.Process(before.pid).send_signal(signal.SIGKILL)
    wait_for(lambda: record(lab, "h2", vm.id).runtime.crash_restarts == before.crash_restarts + 1,
             20, "the crash to be counted")  # fmt: skip
    vm.wait_booted(boots + 1, timeout=60)
    after = record(lab, "h2", vm.id).runtime
    assert after.pid != before.pid and after.run_state == compute_pb2.RUN_STATE_RUNNING
    log = lab.agents["h2"].log_tail(400_000)
    assert re.search(r'"vm.crashed".*killed by SIGKILL', log), log[-2000:]
    assert vm.ping(guest(lab, "red", "h1").ip, count=3).received >= 2


def test_a_vm_deleted_just_before_an_agent_kill_9_is_gone_after_the_restart_with_its_tap_and_disk(
    lab: Scenario,
) -> None:
    agent, host = lab.agents["h2"], lab.lab.hosts["h2"]
    images = lab.lab.root / "images"
    if not (images / "blank.raw").exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(images / "blank.raw"), "16M"], check=True)
    network = agent.network()
    network.PutPorts(network_pb2.PutPortsRequest(request_id=lab.request_id(), ports=[network_pb2.Port(
        id="doomed-port", tenant_id="blue", network_id="net-blue", mac="fa:16:3e:0d:00:01",
        fixed_ips=["198.51.100.99"], vm_nic=network_pb2.VmNicBinding(vm_id="doomed", nic_id="nic0"))]),
        timeout=10)  # fmt: skip
    spec = LabGuest("doomed", "fa:16:3e:0d:00:01", "198.51.100.99/24", agent.dir / "run",
                    agent.dir / "state").spec(lab.images, "doomed-port", "blue")
    spec.disks.append(compute_pb2.VmDisk(id="root", image=compute_pb2.ImageRef(path="blank.raw"),
                                         format=compute_pb2.IMAGE_FORMAT_RAW))  # fmt: skip
    answer = agent.compute().PutVms(compute_pb2.PutVmsRequest(request_id=lab.request_id(), vms=[spec]),
                                    timeout=10)  # fmt: skip
    wait_applied(lab, "h2", answer.generation)
    vm_dir = agent.dir / "state" / "vms" / "doomed"
    assert (vm_dir / "disk-root.qcow2").exists()
    tap = tap_name("doomed", "nic0")
    assert host.run(["ip", "link", "show", tap], check=False).returncode == 0
    agent.compute().DeleteVms(compute_pb2.DeleteVmsRequest(request_id=lab.request_id(), ids=["doomed"]),
                              timeout=10)  # fmt: skip
    agent.kill()  # before the guest has had time to shut down: the deletion is not done yet
    assert qemu_pids("doomed")
    agent.start()
    # Its port now waits for a VM again, so the host's ack waits with it: watch the host.
    wait_for(lambda: not qemu_pids("doomed") and not vm_dir.exists(), 60, "the VM to be gone")
    assert host.run(["ip", "link", "show", tap], check=False).returncode != 0
    assert tap not in host.vsctl("--columns=name", "find", "Interface", f"name={tap}")
    network = agent.network()

    def pending() -> bool:
        port = network.GetPort(network_pb2.GetPortRequest(id="doomed-port"), timeout=10).port
        return port.status.state == common_pb2.APPLY_STATE_PENDING

    wait_for(pending, 10, "the VM's port to wait for a VM again")
    answer = network.DeletePorts(network_pb2.DeletePortsRequest(request_id=lab.request_id(),
                                                                ids=["doomed-port"]), timeout=10)  # fmt: skip
    wait_applied(lab, "h2", answer.generation)
