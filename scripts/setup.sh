#!/usr/bin/env bash
# Make this machine ready to run and test Andromède: Debian packages, a virtual
# environment in .venv, and the project installed in it (editable). Safe to run again:
# it only does what is missing, and a second run takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

# The real parts the agent, its tests and its benchmarks start (see ../shared/design.md).
DEBIAN_PACKAGES=(
  python3 python3-venv python3-dev gcc make systemd
  openvswitch-switch qemu-system-x86 qemu-utils busybox-static iproute2 iputils-ping
  ethtool tcpdump iperf3 dpdk-dev socat
  openvswitch-switch-dpdk  # the engine benchmark's peer: ovs-vswitchd-dpdk, dpdk-testpmd
)

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The Debian service would start a system-wide OVS; the project starts its own per host.
  $SUDO systemctl disable --now openvswitch-switch >/dev/null 2>&1 || true
fi

# The unprivileged user the VMs' QEMU processes run as (systemd/andromede.sysusers).
if ! getent passwd andromede-vm >/dev/null; then
  say "creating the VM user andromede-vm"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO systemd-sysusers "$PWD/systemd/andromede.sysusers"
fi

PYTHON=${PYTHON:-/usr/bin/python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { say "Python 3.11 or newer is needed; $PYTHON is $("$PYTHON" --version)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment .venv"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency list changed.
stamp=".venv/.andromede-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing the project and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  rm -f .venv/.andromede-installed-*
  touch "$stamp"
fi

# The ovs package from PyPI has no C JSON parser (building it needs OVS's headers, which
# Debian does not ship), and its pure-Python one spends a second parsing OVSDB's answer to
# plugging 1,000 ports. Debian's python3-openvswitch (openvswitch-switch needs it) has it,
# statically linked: lend it to the virtual environment. Its Parser interface
# (feed/is_done/finish) has not changed since OVS 2.x.
c_json=$(ls /usr/lib/python3/dist-packages/ovs/_json.cpython-*.so 2>/dev/null | head -n1 || true)
venv_ovs=$(.venv/bin/python -c 'import ovs, os; print(os.path.dirname(ovs.__file__))')
if [ -n "$c_json" ] && [ ! -e "$venv_ovs/$(basename "$c_json")" ]; then
  say "linking Debian's C JSON parser for OVSDB into .venv"
  ln -s "$c_json" "$venv_ovs/"
fi

# The tiny test guest the compute tests and the lab boot (agent/lab/guest.py): Debian's
# cloud kernel (downloaded, never installed) and a busybox initramfs, built once into
# ~/.cache/andromede/guest (or $ANDROMEDE_GUEST_CACHE) and found there on later runs.
# apt's lists may be missing or older than the mirror (the kernel package moved on): then
# refresh them once and build again.
if ! .venv/bin/python -m agent.lab.guest --is-built >/dev/null 2>&1; then
  say "building the test guest (kernel + busybox initramfs) into its cache"
  if ! .venv/bin/python -m agent.lab.guest >/dev/null; then
    say "refreshing apt's package lists and building the test guest again"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    .venv/bin/python -m agent.lab.guest >/dev/null
  fi
fi
