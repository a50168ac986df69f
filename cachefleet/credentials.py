"""Engine credentials of the control plane (kept apart so light processes can import them)."""

from __future__ import annotations

from dataclasses import dataclass

ADMIN_USER = "cachefleet"


@dataclass(frozen=True)
class Credentials:
    """An engine ACL user and its password."""

    user: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(user={self.user!r})"
