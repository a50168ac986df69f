"""cachefleet core: topology model, slot math, bus client, engine resolution, CLI."""

__version__ = "0.1.0"
