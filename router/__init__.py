"""The router: the cluster's slot-aware RESP proxy and configuration endpoint (see
:mod:`router.server` for how the package reads)."""
