"""The memcached configuration endpoint (Auto Discovery) and consistent-hashing proxy."""
