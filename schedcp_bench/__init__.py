"""schedcp-bench: the reproducible benchmark for agentic scheduling (seed 002).

Workloads (``schedcp_bench.workloads``) each start long-lived processes and
log one JSON record per measured unit; the runner alternates arms (kernel
defaults, built-in policies, the agent) over repeated windows on the same
running workload, checks the host is quiet before each window, scores the
result and writes JSON, Markdown and PNG output.  See docs/benchmark.md.
"""
