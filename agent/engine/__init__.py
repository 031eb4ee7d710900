"""The userspace packet engine on a host: its policy (policy.py), the agent's runner
(runner.py) and the `andromede-engine` tool (cli.py)."""
