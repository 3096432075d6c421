"""The lab: a Kubernetes-like cluster of network namespaces on one machine.

    lab.py         Lab: up, down, status, resolve (nodes, pods, etcd, agents, the manifests copy)
    cli.py         `datapath lab ...` commands
    topology.py    topology files (segments, nodes, router, external hosts)
    values.py      Helm-style --set / --values for every agent's config
    prometheus.py  `lab up --prometheus`: a real Prometheus scraping every agent
"""
