"""Chaos runs: scenarios, fault injection, recorded workload, checker, reports."""
