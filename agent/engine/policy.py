"""Which policy the engine runs: the host's state with the engine's own ports plugged in.

The engine meters interfaces that OVS does not carry (`[engine] ports`: interface -> the
port id whose traffic it carries). Those ports get ofports of the engine's own, above every
OpenFlow port number, so they never collide with br-int's; a port that is plugged on br-int
already is refused, since OVS counts its traffic and billing would count it twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from agent.network import specs
from agent.network.reconcile import parse_specs
from agent.store import Store
from dataplane.topology import HostState, Plugged

ENGINE_OFPORT_BASE = 1 << 16  # OpenFlow port numbers end at 0xff00


def engine_state(state: HostState, ports: Mapping[str, str]) -> tuple[HostState, dict[str, int], list[str]]:
    """`state` with the engine's ports plugged; the ofport of each interface that has one;
    and what is wrong with the others, one sentence each."""
    plugged = dict(state.plugged)
    ofports, problems = {}, []
    for n, (interface, port_id) in enumerate(sorted(ports.items())):
        if port_id not in state.ports:
            problems.append(f"engine.ports.{interface}: no port {port_id!r} on this host")
        elif state.ports[port_id].network_id not in state.networks:
            problems.append(f"engine.ports.{interface}: port {port_id!r} is on network "
                            f"{state.ports[port_id].network_id!r}, which this host does not have")  # fmt: skip
        elif port_id in state.plugged:
            problems.append(f"engine.ports.{interface}: port {port_id!r} is plugged on br-int, whose flows "
                            f"count its traffic already; give the engine interfaces OVS does not carry")  # fmt: skip
        else:
            ofport = ENGINE_OFPORT_BASE + n
            plugged[port_id] = Plugged(ofport)
            ofports[interface] = ofport
    return dataclasses.replace(state, plugged=plugged), ofports, problems


def stored_state(store: Store, host: specs.Host = specs.Host()) -> HostState:
    """The host's tenant networks as the agent stored them, nothing plugged (for tools that
    run beside the agent: the reconciler's own state also knows br-int's ofports)."""
    values = parse_specs(store.snapshot().objects, host, {})
    tenants = sorted({v.tenant_id for kind in ("network", "port", "security_group", "rate_limit")
                      for v in values[kind].values()})  # fmt: skip
    return HostState(networks=values["network"], ports=values["port"], security_groups=values["security_group"],
                     tunnel_endpoints=values["tunnel_endpoint"], l2_entries=values["l2_entry"],
                     rate_limits=values["rate_limit"], tenant_tags={t: i + 1 for i, t in enumerate(tenants)})  # fmt: skip
