"""Tenant networks on this host: the Network service's checks (`specs`), its servicer
(`service`), and the drivers and reconciler that bring Open vSwitch to the stored state."""
