"""The web console: one page that shows a running cluster and acts on it.

Served by the cluster supervisor at ``/`` of the cluster's metrics address (that cluster, with
links to the others in the state dir) and by ``cachefleet serve`` at ``/console/`` (every
cluster of the state dir). The page polls JSON (``api/cluster.json``, ``api/history.json``),
follows the event log as server-sent events (``api/events``) and posts its actions (a test
failover of a shard, a snapshot) to the same operations as the CLI.

:mod:`~cachefleet.console.view` shapes the JSON, :mod:`~cachefleet.console.history` keeps the
last 15 minutes of samples and :mod:`~cachefleet.console.checks` decides which requests are
answered (all pure); :mod:`~cachefleet.console.actions` runs the actions and
:mod:`~cachefleet.console.web` holds the aiohttp handlers; the page, its script (the charts
are plain SVG drawn by it) and style sheet are in ``static/``.
"""
