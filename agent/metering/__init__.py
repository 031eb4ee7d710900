"""Per-tenant usage for billing: counters that only grow, durable across crashes.

    ledger   the accounting: sources' cumulative counters (with an epoch) -> deltas -> totals,
             checkpointed in the store; what can be lost, and how that is reported
    ovs      the OVS source (flow and meter statistics of br-int) and the hook the network
             reconciler calls around every change of what carries counts
    poller   reads the sources every [metering] poll_interval_s
    service  the Metering gRPC service (proto/andromede/v1/metering.proto)

Data flows one way: sources -> ledger -> store, and ledger -> service. Another source (the
userspace engine) is a class with a `name` and a `read()` returning a `ledger.Snapshot`,
attached with `Ledger.attach`.
"""
