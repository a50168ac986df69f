"""The router: the cluster's configuration endpoint (and, later, its slot-aware RESP proxy)."""
