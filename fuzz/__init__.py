"""Fuzz campaigns against a live cluster (`make fuzz`)."""
