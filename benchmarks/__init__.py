"""``python -m benchmarks``: how fast and how lean NeuroEdge is on this machine.

One command measures what decides whether a clinic box can run the package: inference
latency per model format and runtime, the agent end to end with a per-stage breakdown,
the agent's peak memory in a device-only environment, start-up times and model sizes.
Every subcommand prints Markdown tables and can write its raw numbers as JSON; the
tables in docs/performance.md come from it. See ``python -m benchmarks --help``.
"""
