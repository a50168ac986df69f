"""Sentinels: failure detection quorum and failover authority."""
