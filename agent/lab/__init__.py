"""The lab: simulated hosts (network namespaces with their own Open vSwitch) and stand-in VMs,
shared by the integration tests' fixtures and `make run`. Nothing here is used by the agent."""
