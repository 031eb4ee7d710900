"""`python -m agent.lab` (what `make run` starts): the multi-host lab, built, checked, explained.

    python -m agent.lab                    # 2 hosts; stays up until Ctrl-C or SIGTERM
    python -m agent.lab --hosts 3 --once   # exits after the summary: 0 only if every check passed
    python -m agent.lab --stand-ins        # namespaces with a veth instead of real VMs (faster)

In order: a Lab (namespaces, the underlay; agent/lab/hosts.py), Scenario.build (per host its
own ovsdb-server, ovs-vswitchd and andromede-agent; the test guest in the lab's image
directory), Scenario.apply (the control plane, over nothing but each agent's gRPC API: per
host two real VMs, one per tenant, each a QEMU process its agent runs, wired into the
overlay), the guests' boot times, the pings from inside the guests, and what each agent lists
back (agent/lab/scenario.py). Progress lines go to stderr (structlog at
warning unless --verbose); the summary and then how to explore the lab with `andromede`
(agent/lab/report.py) go to stdout.

Everything made is removed on every way out: at the end of --once, on Ctrl-C, SIGTERM or
SIGHUP (the first one raises Stopped, which unwinds to the teardown; any later one only prints
a note), and after a failure. Last, any process still running whose command line
names the lab's directory (an agent or OVS daemon whose start was cut short before its pid was
recorded) is stopped by its pid. Every name carries a fresh random prefix, so runs never meet.

Exit status: 0 when every check passed (pings as expected, no leak, every object APPLIED),
1 when a check failed, the lab could not be built or the teardown left something, 2 for bad
usage, 128 + the signal's number when stopped before the summary.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from agent import logs
from agent.lab import report
from agent.lab.hosts import Lab, LabError, in_this_process_only, stop_pid
from agent.lab.scenario import Scenario

MAX_HOSTS = 8  # each runs two OVS daemons and an agent; 8 pass in about a minute on 2 cores
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_FAILURES = (LabError, RuntimeError, TimeoutError, OSError, grpc.RpcError)


class Stopped(Exception):
    """A stop signal arrived; raised from the signal handler wherever the lab was."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(slots=True)
class _Built:
    """What exists so far, for the teardown."""

    lab: Lab | None = None
    scenario: Scenario | None = None


def say(line: str) -> None:
    print(f"lab: {line}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m agent.lab",
        description="Simulated hosts with their own Open vSwitch and andromede-agent, two "
                    "tenants set up over gRPC, pings across hosts; a summary, then the lab "
                    "stays up for the CLI until Ctrl-C.",
    )  # fmt: skip
    p.add_argument("--hosts", type=int, default=2,
                   help=f"simulated hosts, 2..{MAX_HOSTS} (default %(default)s)")  # fmt: skip
    p.add_argument("--once", action="store_true",
                   help="exit after the summary: 0 only if every check passed")  # fmt: skip
    p.add_argument("--stand-ins", action="store_true",
                   help="a namespace with a veth per VM instead of a real VM (QEMU): faster, "
                        "network only")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="the lab's info logs on stderr")
    args = p.parse_args(argv)
    if not 2 <= args.hosts <= MAX_HOSTS:
        p.error(f"--hosts {args.hosts}: give 2..{MAX_HOSTS} (pings cross hosts, and each host "
                f"runs two OVS daemons and an agent)")  # fmt: skip
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure("json", "info" if args.verbose else "warning", stream=sys.stderr)
    if os.geteuid() != 0:
        say("needs root (network namespaces, veths, OVS daemons): run it as root, or sudo make run")
        return 1
    built = _Built()
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    _handle_signals(_raise_stopped)
    code = 1
    try:
        code = _run(args, built)
    except Stopped as e:
        say(f"{e} before the lab was ready")
        code = 128 + e.signum
    except _FAILURES as e:
        say(f"failed: {_describe(e)}")
    finally:
        _handle_signals(_note_teardown)
        clean = _teardown(built)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if clean else 1


def _run(args: argparse.Namespace, built: _Built) -> int:
    lab = _new_lab(built)
    say(f"lab {lab.prefix}: building {args.hosts} hosts in {lab.root}")
    built.scenario = Scenario.build(lab, args.hosts, guests=not args.stand_ins, progress=say)
    say("applying the two tenants on every host over gRPC")
    built.scenario.apply()
    boots = {}
    if not args.stand_ins:
        say("waiting for the VMs to boot")
        boots = built.scenario.boot_times()
    objects = built.scenario.objects()
    say("pinging within each tenant across hosts" + ("" if args.stand_ins else ", from the guests"))
    checks = built.scenario.pings()
    print(report.summary(built.scenario, objects, checks, boots), flush=True)
    code = 0 if report.passed(objects, checks) else 1
    if args.once:
        return code
    print(report.explore(built.scenario, _cli_command()), flush=True)
    try:
        while True:
            signal.pause()
    except Stopped as e:
        say(f"{e}: stopping")
    return code


def _new_lab(built: _Built) -> Lab:
    """A Lab, made and put in `built` with the stop signals held back, so none can arrive
    between its namespaces being made and the teardown knowing of them (a held-back signal
    is raised right after)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        built.lab = Lab()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return built.lab


def _teardown(built: _Built) -> bool:
    """Remove whatever `built` holds; True if nothing of the lab is left."""
    lab = built.lab
    if lab is None:
        return True
    say(f"removing lab {lab.prefix}")
    clean = True
    try:
        (built.scenario or lab).close()
    except Exception as e:  # report it, and still look for what is left
        say(f"teardown: {e}")
        clean = False
    for pid in _stop_leftovers(lab.root):
        say(f"stopped process {pid}, left running by an interrupted start")
    left = lab.namespaces()
    if left or lab.root.exists():
        say(f"left behind: {left or ''} {lab.root if lab.root.exists() else ''}; remove them "
            f"with ip netns del NAME and rm -r")  # fmt: skip
        return False
    if clean:
        say(f"lab {lab.prefix} removed: no namespace, process or file of it is left")
    return clean


def _stop_leftovers(root: Path) -> list[int]:
    """Stop, by pid, every process whose command line names a path under `root`."""
    inside, stopped = f"{root}/", []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and inside in " ".join(proc.info["cmdline"] or ()):
            stop_pid(proc.pid)
            stopped.append(proc.pid)
    return stopped


def _handle_signals(handler: Callable[[int], None]) -> None:
    """`handler` for the stop signals, in this process only (not in pyroute2's forks)."""
    for sig in _SIGNALS:
        signal.signal(sig, in_this_process_only(handler))


def _raise_stopped(signum: int) -> None:
    """The first stop signal unwinds to the teardown; later ones only print a note, so that
    they cannot cut the teardown short (Scenario.build's own clean-up included)."""
    _handle_signals(_note_teardown)
    raise Stopped(signum)


def _note_teardown(signum: int) -> None:
    # os.write, not print: a signal handler that prints while print runs fails (reentrant call)
    name = signal.Signals(signum).name
    os.write(2, f"lab: {name}: still tearing the lab down, a few seconds more\n".encode())


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _cli_command() -> str:
    """How to call `andromede` from here: the venv's script (relative when below the current
    directory), else this Python with -m agent.cli."""
    script = Path(sys.executable).parent / "andromede"
    if not script.exists():
        return f"{sys.executable} -m agent.cli"
    cwd = Path.cwd()
    return str(script.relative_to(cwd)) if script.is_relative_to(cwd) else str(script)


if __name__ == "__main__":
    raise SystemExit(main())
