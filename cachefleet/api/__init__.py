"""The management API: the ElastiCache Query API (version 2015-02-02) over HTTP.

``wire`` is the pure wire format (form parameters in, XML out, errors, pagination),
``names`` the service's identifiers (ARNs, node group ids, node types), ``shapes`` turns
requests into topologies and clusters into the service's records, ``store`` keeps what only
the API knows (descriptions, tags) in the state dir, ``server`` is the aiohttp front end that
calls the same operations as the CLI.
"""
