"""`datapath connectivity test` (lab): a battery of named checks, as `cilium connectivity test`.

Modules:
    resources   the test's own namespaces, pods, services, pool and policies (manifests)
    checks      the checks: pure data built from what the lab and the agents report
    runner      deploying, running each check from its namespace, results and their flows
    cli         the thin click group
"""
