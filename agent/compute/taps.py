"""A VM NIC's host side: a persistent tap device, made with pyroute2, and its file descriptor.

The tap is persistent (it outlives the QEMU that holds it, so an agent or QEMU restart finds it
again) and the agent opens it itself (TUNSETIFF) and hands QEMU the descriptor, as libvirt
does: QEMU runs as an unprivileged user and needs neither CAP_NET_ADMIN nor access to
/dev/net/tun. The tap's own MAC is not the guest's (the guest's is the port's, given to the
virtio device): a locally administered fe:... address keeps OVS from learning the guest's MAC
on the wrong side.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from pathlib import Path

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = structlog.get_logger(__name__)

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
_ENOENT = 19  # ENODEV from netlink: no such device


def tap_name(vm_id: str, nic_id: str) -> str:
    """A stable, short (15-character) interface name for a VM's NIC, as Nova's "tap<port
    uuid prefix>"; hashed because ids can be 128 characters."""
    return "tap" + hashlib.blake2b(f"{vm_id}/{nic_id}".encode(), digest_size=6).hexdigest()


COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")


def counters(name: str) -> dict[str, int]:
    """The tap's packet and byte counters from sysfs (empty if it is gone)."""
    values = {}
    for counter in COUNTERS:
        try:
            values[counter] = int(Path("/sys/class/net", name, "statistics", counter).read_text())
        except (OSError, ValueError):
            return {}
    return values


class Taps:
    """Taps in the agent's network namespace."""

    def ensure(self, name: str, mtu: int) -> None:
        """Make the tap exist, up, with `mtu` (idempotent)."""
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                ipr.link("add", ifname=name, kind="tuntap", mode="tap", flags=IFF_NO_PI | IFF_VNET_HDR)
                found = ipr.link_lookup(ifname=name)
                log.info("tap.created", tap=name, mtu=mtu)
            index = found[0]
            mac = "fe:" + ":".join(f"{b:02x}" for b in hashlib.blake2b(name.encode(), digest_size=5).digest())
            ipr.link("set", index=index, mtu=mtu, address=mac, state="up")

    def open(self, name: str) -> int:
        """A descriptor of the tap for QEMU (`-netdev tap,fd=N` or QMP getfd); the caller
        closes it once QEMU holds its own copy."""
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            request = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError:
            os.close(fd)
            raise
        return fd

    def exists(self, name: str) -> bool:
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=name))

    def remove(self, name: str) -> None:
        """Delete the tap (idempotent)."""
        with IPRoute() as ipr:
            try:
                ipr.link("del", ifname=name)
                log.info("tap.removed", tap=name)
            except NetlinkError as e:
                if e.code != _ENOENT:
                    raise
