"""The management API: the ElastiCache Query API (version 2015-02-02) over HTTP.

Pure parts: ``wire`` (form parameters in, XML out, errors, pagination), ``names`` (ARNs,
node group ids, node types), ``creation`` (the service's validation of the create calls,
into topologies), ``modification`` (the modify calls' validation, into changed topologies),
``shapes`` (clusters and snapshots into the service's records), ``auth`` (SigV4 and
IAM-style policies). Around them: ``store`` (the clusters in the state dir and
``api.json``), ``access`` (credentials.yaml, the audit log), and the aiohttp front end
``server`` with ``group_actions``, ``modify_actions``, ``snapshot_actions``,
``cache_cluster_actions`` and ``tag_actions``, which call the same operations as the CLI.
"""
