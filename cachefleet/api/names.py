"""The service's identifiers: replication group ids, node group ids, ARNs, node types."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cachefleet.api.wire import ApiError
from cachefleet.topology import NODE_TYPES

_GROUP_ID = re.compile(r"^[a-z][a-z0-9-]{0,39}$")

#: The service's node types and what each becomes here: the memory its nodes are given
#: (one of the topology's node sizes, in the same order as the real types' memory). Names
#: the topology already knows (cache.micro …) are accepted as they are.
NODE_TYPE_SIZES: dict[str, str] = {
    "cache.t2.micro": "cache.micro",
    "cache.t3.micro": "cache.micro",
    "cache.t4g.micro": "cache.micro",
    "cache.t2.small": "cache.small",
    "cache.t3.small": "cache.small",
    "cache.t4g.small": "cache.small",
    "cache.t2.medium": "cache.medium",
    "cache.t3.medium": "cache.medium",
    "cache.t4g.medium": "cache.medium",
    "cache.m5.large": "cache.large",
    "cache.m6g.large": "cache.large",
    "cache.m7g.large": "cache.large",
    "cache.r5.large": "cache.large",
    "cache.r6g.large": "cache.large",
    "cache.r7g.large": "cache.large",
}


def node_size(node_type: str) -> str:
    """The topology's node_type for a service node type (or a topology name as it is)."""
    if node_type in NODE_TYPES:
        return node_type
    size = NODE_TYPE_SIZES.get(node_type)
    if size is None:
        known = ", ".join([*NODE_TYPE_SIZES, *NODE_TYPES])
        raise ApiError(
            "InvalidParameterValue", f"CacheNodeType: {node_type!r} is not one of {known}"
        )
    return size


def node_memory(node_type: str) -> int:
    """Bytes of memory a node of this type gets."""
    return NODE_TYPES[node_size(node_type)]


def group_id(raw: str, field: str = "ReplicationGroupId") -> str:
    """A replication group id, lower-cased as the service stores it: 1-40 letters, digits or
    hyphens, starting with a letter, no two hyphens in a row, not ending with one."""
    value = raw.lower()
    if not _GROUP_ID.fullmatch(value) or "--" in value or value.endswith("-"):
        raise ApiError(
            "InvalidParameterValue",
            f"{field}: {raw!r} must be 1-40 letters, digits or hyphens, start with a letter, "
            "and have no two consecutive hyphens nor end with one",
        )
    return value


def node_group_id(shard: int) -> str:
    """Shard 1 is node group 0001, as the service numbers them."""
    return f"{shard:04d}"


def shard_of(raw: str) -> int:
    """The shard of a NodeGroupId (``0002`` or ``2``)."""
    if not raw.isdigit() or len(raw) > 4 or int(raw) < 1:
        raise ApiError(
            "InvalidParameterValue", f"NodeGroupId: {raw!r} must be 1 to 4 digits, like 0001"
        )
    return int(raw)


@dataclass(frozen=True)
class Account:
    """Where ARNs say the resources live (configurable; nothing here depends on them)."""

    region: str = "us-east-1"
    account: str = "000000000000"

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:elasticache:{self.region}:{self.account}:{kind}:{name}"

    def parse_arn(self, arn: str) -> tuple[str, str]:
        """(resource kind, name) of one of this account's ARNs; InvalidARN otherwise."""
        parts = arn.split(":", 6)
        if len(parts) != 7 or parts[:3] != ["arn", "aws", "elasticache"] or not parts[6]:
            raise ApiError("InvalidARN", f"{arn!r} is not an ElastiCache ARN")
        if parts[3] != self.region or parts[4] != self.account:
            raise ApiError(
                "InvalidARN",
                f"{arn!r} is not in this endpoint's region and account "
                f"({self.region}, {self.account})",
            )
        return parts[5], parts[6]
