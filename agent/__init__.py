"""agent: the daemon half. Config and manifests in, identities and endpoints as state, a pure
reconcile plan applied to the BPF maps and attachments, a JSON API on a unix socket, Prometheus
metrics, the CLI, the CNI plugin and the netns lab."""
