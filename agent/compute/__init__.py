"""The compute side: VMs as QEMU processes driven over QMP (agent/compute/*.py)."""
