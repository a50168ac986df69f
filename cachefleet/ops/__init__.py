"""L2, the operator side: lifecycle operations behind the CLI (and later the API)."""
