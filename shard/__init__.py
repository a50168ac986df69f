"""Zone agents: render engine configs, start and supervise nodes, create the cluster."""
