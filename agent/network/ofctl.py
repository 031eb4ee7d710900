"""OpenFlow flows and meters on br-int, through `ovs-ofctl` on the bridge's management socket.

Where data comes from and goes: the compiler (dataplane/compile/) produces `Flow` values; the
reconciler asks this driver what is installed (`installed`), puts its desired flows in OVS's
own spelling (`canonical`), computes the difference (`diff`, pure) and sends it (`apply`) in
one atomic OpenFlow bundle. Everything goes to `unix:<rundir>/<bridge>.mgmt`, the socket
ovs-vswitchd makes for each bridge in its OVS_RUNDIR. Each operation is one `ovs-ofctl`
subprocess on the whole flow set, never one per flow; meters are one per changed meter
(ovs-ofctl 3.1 has no multi-meter command, and meters change only with rate limits).

OpenFlow 1.5 (`-O OpenFlow15`): OVS 3.1 enables it on every bridge by default, and it has
what is needed: bundles (atomic, ordered), meters, `delete_strict` by cookie.

Canonical form: `ovs-ofctl parse-flows` reads flows exactly as `add-flows` does, encodes each
as the OpenFlow 1.5 flow_mod the switch would get, decodes it and prints it with the same
formatters `dump-flows` uses (match_format and ofpacts_format). So its output is what OVS
prints back: `dl_type=0x0800` becomes `ip`, `udp_dst` `tp_dst`, `nw_src=198.51.100.5/24`
`198.51.100.0/24`, `load:` `set_field:`, `strip_vlan` `pop_vlan`, ct() arguments are reordered,
`tp_dst=80` without a protocol normalises to an empty match, and so on. Normalising the text
ourselves would have to re-implement those rules and would drift with OVS versions; a scratch
bridge would need a running switch and two subprocesses. tests/test_ovs_lab.py proves on a real
bridge that canonical(flows) == installed() for conjunctions, ct(), masks, IPv6, ND, ARP
fields, set_field, load, move, resubmit, goto_table, write_metadata, meters and tunnels.
Results are cached by text, so a pass whose flows did not change runs no parse-flows at all.

Atomicity: `ovs-ofctl --bundle add-flows` sends every line (`delete_strict ...`, `add ...`)
in one OpenFlow bundle with the atomic and ordered flags; ovs-vswitchd commits it as one new
version of its tables or not at all, so no packet ever sees half a change. Measured in the
lab test (tests/test_ovs_lab.py): 100 bundles that each delete every forwarding flow of a
flood-pinged path and add another path's took about 1 s and lost 0 of 20,000 packets; the
same swaps sent as a delete bundle then an add bundle lost 40-70.

Meters on the userspace datapath, measured on OVS 3.1 here. `meter-features`: max_meter
262144, max_bands 8, band_types: drop, capabilities: kbps pktps burst stats, max_color 0.
- A drop band enforces one rate, in kbps (counting whole Ethernet frames) or pktps, with a
  bucket of `burst_size` (kilobits or packets): RFC 2698's CIR and CBS, as a single-rate
  policer that drops what exceeds them. A 60 Mbit/s UDP flood through a 20,000 kbps meter
  with a 2,000 kb burst passed 21,000 kbps over 2 s and 20,670 over 3 s (the rate plus the
  bucket drained once); 5,000 kbps/500 kb passed 5,180 kbps over 3 s; 1,000 pktps/100
  packets passed 1,059 pps of 100-byte datagrams over 3 s.
- A band without burst_size gets a bucket of one second at its rate: 20,000 kbps with none
  passed 26,670 kbps over 3 s. Give every band a burst size.
- dscp_remark bands are refused (OFPMMFC_BAD_BAND) and there are no colours (max_color 0), so
  the marking between CIR and PIR, hence PIR/PBS and the colour-aware mode of RFC 2698's
  trTCM, cannot be enforced by OVS here. Several drop bands are accepted, but a packet that
  exceeds any of them is dropped (bands of 20,000 and 10,000 kbps passed 13,340 kbps over
  3 s: 10,000 plus its one-second bucket), so only the lowest rate counts. The userspace
  engine (dataplane/kernels) is where the full trTCM belongs.
Order for the reconciler: meters before the flows that use them (a flow naming a missing meter
is refused, OFPMMFC_INVALID_METER, and fails its whole bundle), and delete meters after those
flows (deleting a meter deletes the flows that use it: measured).

OVS restart detection (as Neutron's OVS agent does): a canary flow, `CANARY`, in a table the
pipeline never uses, is installed with every bundle; `restarted()` is True when it is gone:
ovs-vswitchd restarted (it comes back with the bridges and ports from OVSDB but no flows), or
someone flushed the bridge. The reconciler then re-applies everything.

Errors: ApplyError UNAVAILABLE when the socket is missing or refuses (ovs-vswitchd down, or
the bridge not made yet), INTERNAL when OVS rejects a flow or meter (a compiler bug: the
message quotes the line).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from agent.reconcile import ApplyError
from dataplane.compile.flows import COOKIE_MAGIC, MAX_PRIORITY, SERIAL_BITS, Flow, is_ours

log = structlog.get_logger(__name__)

PROTOCOL = "OpenFlow15"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_PRIORITY = 32768  # what OVS assumes when a flow names none (and then prints none)
OUR_COOKIES = f"cookie={COOKIE_MAGIC << 56:#x}/{0xFF << 56:#x}"
CANARY_TABLE = 253  # unused by the pipeline (254 is OVS's own internal table)
CANARY = Flow(table=CANARY_TABLE, priority=MAX_PRIORITY, match="", actions="drop",
              cookie=(COOKIE_MAGIC << 56) | ((1 << SERIAL_BITS) - 1))  # fmt: skip
_CACHE_MAX = 500_000  # canonical texts remembered (about 200 bytes each)
# Fields dump-flows prints before the match: statistics, timeouts, flags (ours have none).
_META = frozenset({"cookie", "table", "duration", "n_packets", "n_bytes", "idle_timeout",
                   "hard_timeout", "importance", "idle_age", "hard_age", "send_flow_rem",
                   "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts"})  # fmt: skip
_ACTIONS = re.compile(r"^(?:(.*?) )?actions=(.*)$")
FIRST_BUNDLES = 8  # parallel bundles for the flows no packet can reach yet (OpenFlow.apply)
BUNDLE_FLOWS_PER_S = 2_000  # the slowest rate measured (2,000 ports on br-int), for timeouts
_UNREACHABLE = ("No such file or directory", "Connection refused", "Broken pipe",
                "Connection reset", "End of file")  # fmt: skip


# --- meters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Band:
    """One meter band: above `rate` (the meter's unit), packets are dropped; `burst_size`
    (kilobits or packets, 0: none) is the bucket depth."""

    rate: int
    burst_size: int = 0
    type: str = "drop"
    prec_level: int = 0  # dscp_remark only (OVS's userspace datapath refuses those)

    def __post_init__(self) -> None:
        if self.rate < 1:
            raise ValueError(f"rate: must be >= 1, got {self.rate}")
        if self.burst_size < 0:
            raise ValueError(f"burst_size: must be >= 0, got {self.burst_size}")
        if self.type not in ("drop", "dscp_remark"):
            raise ValueError(f"type: must be drop or dscp_remark, got {self.type!r}")

    def text(self) -> str:
        parts = [f"type={self.type}", f"rate={self.rate}"]
        if self.burst_size:
            parts.append(f"burst_size={self.burst_size}")
        if self.type == "dscp_remark":
            parts.append(f"prec_level={self.prec_level}")
        return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Meter:
    """An OpenFlow meter as OVS reports it: id, unit ("kbps" or "pktps"), bands, and whether
    it counts (stats). Either every band has a burst size or none has (OVS's rule)."""

    id: int
    unit: str
    bands: tuple[Band, ...]
    stats: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.id <= 0xFFFF0000:
            raise ValueError(f"id: must be 1..{0xFFFF0000}, got {self.id}")
        if self.unit not in ("kbps", "pktps"):
            raise ValueError(f"unit: must be kbps or pktps, got {self.unit!r}")
        if not self.bands:
            raise ValueError("bands: at least one")
        if len({b.burst_size > 0 for b in self.bands}) > 1:
            raise ValueError("bands: either all have a burst_size or none")

    @staticmethod
    def drop(id: int, *, kbps: int | None = None, pktps: int | None = None, burst: int = 0
             ) -> Meter:  # fmt: skip
        """A one-band policer: drop above `kbps` (or `pktps`) with a `burst` bucket."""
        if (kbps is None) == (pktps is None):
            raise ValueError("give exactly one of kbps and pktps")
        unit, rate = ("kbps", kbps) if kbps is not None else ("pktps", pktps)
        return Meter(id, unit, (Band(rate, burst),))

    def text(self) -> str:
        """The meter in ovs-ofctl add-meter syntax."""
        flags = [self.unit] + (["burst"] if self.bands[0].burst_size else [])
        flags += ["stats"] if self.stats else []
        bands = ",".join(b.text() for b in self.bands)
        return f"meter={self.id},{','.join(flags)},bands={bands}"


def meter_diff(desired: Iterable[Meter], installed: Iterable[Meter]
               ) -> tuple[list[Meter], list[Meter], list[int]]:  # fmt: skip
    """(to add, to modify, ids to delete) that turn `installed` into `desired`. Pure."""
    want = _unique({m.id: m for m in desired}, desired, "meter")
    have = {m.id: m for m in installed}
    add = [m for i, m in sorted(want.items()) if i not in have]
    modify = [m for i, m in sorted(want.items()) if i in have and have[i] != m]
    delete = sorted(i for i in have if i not in want)
    return add, modify, delete


def parse_meters(text: str) -> list[Meter]:
    """`dump-meters` output -> Meters (sorted by id)."""
    meters, head, bands = [], None, []

    def done() -> None:
        if head is not None:
            words = head.split()
            meter_id = int(words[0].partition("=")[2])
            unit = "pktps" if "pktps" in words else "kbps"
            meters.append(Meter(meter_id, unit, tuple(bands), stats="stats" in words))

    for line in text.splitlines():
        line = line.strip()
        if line.startswith("meter="):
            done()
            head, bands = line, []
        elif line.startswith("type=") and head is not None:
            fields = dict(word.partition("=")[::2] for word in line.split())
            bands.append(Band(int(fields["rate"]), int(fields.get("burst_size", 0)),
                              fields["type"], int(fields.get("prec_level", 0))))  # fmt: skip
    done()
    return sorted(meters, key=lambda m: m.id)


_METER_STATS = re.compile(r"^meter:(\d+) ")
_BAND_STATS = re.compile(r"^\d+: packet_count:(\d+) byte_count:(\d+)")


def parse_meter_stats(text: str) -> dict[int, tuple[int, int]]:
    """`meter-stats` output -> {meter id: (packets, bytes) its bands dropped}. OVS's meters
    have drop bands only, and a band counts the packets it dropped."""
    stats: dict[int, tuple[int, int]] = {}
    meter = None
    for line in text.splitlines():
        line = line.strip()
        if (head := _METER_STATS.match(line)) is not None:
            meter = int(head.group(1))
            stats[meter] = (0, 0)
        elif meter is not None and (band := _BAND_STATS.match(line)) is not None:
            packets, nbytes = stats[meter]
            stats[meter] = (packets + int(band.group(1)), nbytes + int(band.group(2)))
    return stats


# --- flows -------------------------------------------------------------------------------


def diff(desired: Iterable[Flow], installed: Iterable[Flow]) -> tuple[list[Flow], list[Flow]]:
    """(to add, to delete) that turn `installed` into `desired`, both in canonical form. A
    flow whose key (table, priority, match) is installed with other actions or cookie is an
    add (it replaces the old one in place); an installed key no longer desired is a delete.
    Pure; the order follows `desired` and `installed`. Two desired flows with one key are a
    compiler bug: ValueError."""
    desired = list(desired)
    want = _unique({f.key: f for f in desired}, desired, "flow")
    have = {f.key: f for f in installed}
    add = [f for f in want.values() if have.get(f.key) != f]
    delete = [f for f in have.values() if f.key not in want]
    return add, delete


_COUNTERS = re.compile(r"n_packets=(\d+), n_bytes=(\d+)")


def parse_dump(text: str) -> list[Flow]:
    """`ovs-ofctl --no-stats --no-names dump-flows` output -> Flows (all cookies)."""
    found = []
    for line in text.splitlines():
        m = _ACTIONS.match(line.strip())
        if m is None:
            continue  # a reply header
        head, actions = m.group(1) or "", m.group(2)
        cookie, table, match = 0, 0, ""
        for part in head.split(", "):
            part = part.strip().rstrip(",")
            key, _, value = part.partition("=")
            if key == "cookie":
                cookie = int(value, 16)
            elif key == "table":
                table = int(value)
            elif key not in _META and part:
                match = part
        found.append(_flow(table, match, actions, cookie))
    return found


def parse_flow_mods(text: str) -> list[Flow]:
    """`ovs-ofctl parse-flows` output (one "OFPT_FLOW_MOD ...: ADD ..." line per flow) ->
    Flows, in input order."""
    found = []
    for line in text.splitlines():
        if not line.startswith("OFPT_FLOW_MOD"):
            continue
        body = line.split("): ", 1)[1]
        body = body.split(" ", 1)[1] if " " in body else ""  # drop the command (ADD)
        head, _, actions = body.partition("actions=")
        table, cookie, match = 0, 0, ""
        for word in head.split():
            if word.startswith("table:"):
                table = int(word[6:])
            elif word.startswith("cookie:"):
                cookie = int(word[7:].split("/")[0], 16)
            elif "=" in word or (":" not in word and word not in _META):
                match = word
        found.append(_flow(table, match, actions, cookie))
    return found


def _flow(table: int, match: str, actions: str, cookie: int) -> Flow:
    priority = DEFAULT_PRIORITY
    if match.startswith("priority="):
        first, _, match = match.partition(",")
        priority = int(first[9:])
    return Flow(table=table, priority=priority, match=match, actions=actions, cookie=cookie)


def _unique(by_key: dict, items: Sequence, what: str) -> dict:
    if len(by_key) != len(items):
        seen: dict = {}
        for item in items:
            key = item.key if isinstance(item, Flow) else item.id
            if key in seen:
                raise ValueError(f"two desired {what}s with one key {key}: {seen[key]} and {item}")
            seen[key] = item
    return by_key


# --- the driver ----------------------------------------------------------------------------


class OpenFlow:
    """ovs-ofctl against the bridges of one ovs-vswitchd, whose OVS_RUNDIR is `rundir`."""

    def __init__(self, rundir: str | Path, *, protocol: str = PROTOCOL,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:  # fmt: skip
        self.rundir = Path(rundir)
        self.protocol = protocol
        self.timeout = timeout
        self._canonical: dict[str, Flow] = {}

    def target(self, bridge: str) -> str:
        return f"unix:{self.rundir / bridge}.mgmt"

    # --- flows ---------------------------------------------------------------------------

    def installed(self, bridge: str) -> list[Flow]:
        """Our flows on `bridge` (cookies with COOKIE_MAGIC), the canary left out."""
        text = self._ofctl(bridge, ["--no-stats", "dump-flows", self.target(bridge), OUR_COOKIES])
        return [f for f in parse_dump(text) if is_ours(f.cookie) and f.key != CANARY.key]

    def counters(self, bridge: str, table: int | None = None) -> list[tuple[Flow, int, int]]:
        """Our flows on `bridge` (only those of `table` if given) with their (packets, bytes)
        counters, the canary left out."""
        where = OUR_COOKIES if table is None else f"table={table},{OUR_COOKIES}"
        text = self._ofctl(bridge, ["dump-flows", self.target(bridge), where])
        found = []
        for line in text.splitlines():
            flows = parse_dump(line)
            counts = _COUNTERS.search(line)
            if flows and counts and is_ours(flows[0].cookie) and flows[0].key != CANARY.key:
                found.append((flows[0], int(counts.group(1)), int(counts.group(2))))
        return found

    def canonical(self, flows: Iterable[Flow]) -> list[Flow]:
        """`flows` as OVS will print them back (see the module docstring); same order."""
        flows = list(flows)
        todo = list(dict.fromkeys(f.text() for f in flows if f.text() not in self._canonical))
        if todo:
            started = time.perf_counter()
            text = self._ofctl(None, ["parse-flows", "-"], "\n".join(todo) + "\n", lines=todo)
            parsed = parse_flow_mods(text)
            if len(parsed) != len(todo):
                raise ApplyError(f"ovs-ofctl parse-flows gave {len(parsed)} flows for "
                                 f"{len(todo)}", grpc.StatusCode.INTERNAL)  # fmt: skip
            if len(self._canonical) + len(todo) > _CACHE_MAX:
                self._canonical.clear()
            self._canonical.update(zip(todo, parsed))
            log.debug("flows.canonicalised", flows=len(todo),
                      ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip
        return [self._canonical[f.text()] for f in flows]

    def apply(self, bridge: str, add: Sequence[Flow] = (), delete: Sequence[Flow] = (), *,
              canary: bool = False, first: Sequence[Flow] = ()) -> None:  # fmt: skip
        """One atomic bundle on `bridge`: delete `delete` (by key, and only if the cookie is
        still the one given), then add `add` (replacing flows with the same key), then the
        canary. Nothing is sent when there is nothing to do, unless `canary` (say so after
        `restarted()` was True, so the canary comes back even with no flow to add).

        `first`: flows of `add` that no packet can reach before the rest of `add` is in
        (`dataplane.compile.openflow.unreachable`). They go first, in FIRST_BUNDLES bundles
        at once over as many OpenFlow connections, then the rest in the one atomic bundle:
        every packet still sees the old pipeline or all of the new, and ovs-vswitchd, which
        takes 50 messages per connection between two polls of all its ports, takes them
        several times faster (21,000 flows with 1,000 ports: 2.0 s in one bundle, 0.7 s)."""
        if not add and not delete and not canary:
            return
        started = time.perf_counter()
        if first:
            early = [f"add {f.text()}" for f in first]
            size = -(-len(early) // FIRST_BUNDLES)
            self._bundles(bridge, [early[i:i + size] for i in range(0, len(early), size)])
            loaded = {f.key for f in first}
            add = [f for f in add if f.key not in loaded]
        lines = [_delete_line(f) for f in delete] + [f"add {f.text()}" for f in add]
        lines.append(f"add {CANARY.text()}")
        self._bundles(bridge, [lines])
        log.info("flows.applied", bridge=bridge, added=len(add) + len(first), first=len(first),
                 deleted=len(delete), ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip

    def _bundles(self, bridge: str, bundles: Sequence[Sequence[str]]) -> None:
        """Each list of lines as one atomic bundle, all sent at the same time, one ovs-ofctl
        each. ovs-vswitchd takes a bundle in slices between polling its ports: with ~1,000
        ports 100k flows took ~10 s in one bundle (bench/network.py), so the timeout grows
        with the bundle, and a big one is not killed half-way (nothing is applied then)."""
        with ThreadPoolExecutor(max_workers=max(1, len(bundles))) as pool:
            done = [pool.submit(self._ofctl, bridge, ["--bundle", "add-flows", self.target(bridge), "-"],
                                "\n".join(lines) + "\n", lines=lines,
                                timeout=self.timeout + len(lines) / BUNDLE_FLOWS_PER_S)
                    for lines in bundles]  # fmt: skip
            for bundle in done:
                bundle.result()  # the first error, after every bundle has ended

    def restarted(self, bridge: str, timeout: float | None = None) -> bool:
        """True when the canary flow is not on `bridge`: ovs-vswitchd restarted (or the flows
        were flushed, or never installed). Re-apply everything, with canary=True."""
        canary = f"table={CANARY.table},cookie={CANARY.cookie:#x}/-1"
        text = self._ofctl(bridge, ["--no-stats", "dump-flows", self.target(bridge), canary],
                           timeout=timeout)  # fmt: skip
        gone = not any(f.key == CANARY.key for f in parse_dump(text))
        if gone:
            log.info("ovs.canary_missing", bridge=bridge)
        return gone

    # --- meters ------------------------------------------------------------------------

    def meters(self, bridge: str) -> list[Meter]:
        """Every meter on `bridge`, sorted by id."""
        return parse_meters(self._ofctl(bridge, ["dump-meters", self.target(bridge)]))

    def meter_stats(self, bridge: str) -> dict[int, tuple[int, int]]:
        """Each meter's drops on `bridge` (packets, bytes of its bands together), by id."""
        return parse_meter_stats(self._ofctl(bridge, ["meter-stats", self.target(bridge)]))

    def apply_meters(self, bridge: str, add: Sequence[Meter] = (), modify: Sequence[Meter] = (),
                     delete: Sequence[int] = ()) -> None:  # fmt: skip
        """Add, modify and delete meters (one ovs-ofctl call each; see meter_diff). Deleting a
        meter deletes the flows that use it: delete the flows first."""
        started = time.perf_counter()
        target = self.target(bridge)
        for meter in add:
            self._ofctl(bridge, ["add-meter", target, meter.text()], lines=[meter.text()])
        for meter in modify:
            self._ofctl(bridge, ["mod-meter", target, meter.text()], lines=[meter.text()])
        for meter_id in delete:
            self._ofctl(bridge, ["del-meters", target, f"meter={meter_id}"])
        if add or modify or delete:
            log.info("meters.applied", bridge=bridge, added=len(add), modified=len(modify),
                     deleted=len(delete), ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip

    # --- inside ------------------------------------------------------------------------

    def _ofctl(self, bridge: str | None, args: list[str], input: str | None = None,
               lines: Sequence[str] = (), timeout: float | None = None) -> str:  # fmt: skip
        timeout = timeout or self.timeout
        argv = ["ovs-ofctl", "-O", self.protocol, "--no-names", f"--timeout={int(timeout)}",
                *args]  # fmt: skip
        try:
            done = subprocess.run(argv, input=input, capture_output=True, text=True,
                                  timeout=timeout + 5)  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise ApplyError(f"ovs-ofctl {' '.join(args[:2])}: no answer in {timeout:g} s: "
                             f"is ovs-vswitchd stuck?", grpc.StatusCode.UNAVAILABLE) from e  # fmt: skip
        except FileNotFoundError as e:
            raise ApplyError("ovs-ofctl not found: install openvswitch-switch (scripts/setup.sh)",
                             grpc.StatusCode.FAILED_PRECONDITION) from e  # fmt: skip
        if done.returncode == 0:
            return done.stdout
        error = done.stderr.strip()
        if "Alarm clock" in error:  # ovs-ofctl's own --timeout: OVS refused nothing
            raise ApplyError(f"ovs-ofctl {' '.join(args[:2])} on {bridge}: ovs-vswitchd did not "
                             f"finish within {timeout:g} s ({len(lines)} lines); it is slow with "
                             f"this many ports and flows", grpc.StatusCode.UNAVAILABLE)  # fmt: skip
        if bridge is not None and any(s in error for s in _UNREACHABLE):
            raise ApplyError(f"no OpenFlow connection to bridge {bridge} at {self.target(bridge)} "
                             f"({error}): check that ovs-vswitchd runs and the bridge exists",
                             grpc.StatusCode.UNAVAILABLE)  # fmt: skip
        command = next(a for a in args if not a.startswith("--"))
        where = re.search(r"-:(\d+):", error)
        line = lines[int(where.group(1)) - 1] if where and int(where.group(1)) <= len(lines) else ""
        if not line and len(lines) == 1:
            line = lines[0]
        raise ApplyError(f"OVS refused {command}{' on ' + bridge if bridge else ''}: {error}"
                         f"{' (line: ' + line + ')' if line else ''}", grpc.StatusCode.INTERNAL)  # fmt: skip


def _delete_line(flow: Flow) -> str:
    match = f",{flow.match}" if flow.match else ""
    head = f"table={flow.table},priority={flow.priority},cookie={flow.cookie:#x}/-1"
    return f"delete_strict {head}{match}"
