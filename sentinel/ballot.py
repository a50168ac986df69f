"""A sentinel's ballot on disk: its last vote and failover epoch, durable before a vote
leaves the process, so a restarted sentinel never votes twice in one failover epoch."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cachefleet.messages import MAX_EPOCH
from sentinel.decide import VoteState


class Ballot:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.vote, self.failover_epoch = self._load()

    def _load(self) -> tuple[VoteState, int]:
        """The saved ballot, or a fresh one when the file is missing or not ours."""
        try:
            data = json.loads(self.path.read_text())
            epoch = data.get("failover_epoch", data.get("epoch"))
            voted_epoch, voted_for, voted_shard = (
                data["voted_epoch"],
                data["voted_for"],
                data["voted_shard"],
            )
            ints = (epoch, voted_epoch)
            if any(isinstance(v, bool) or not isinstance(v, int) for v in ints):
                raise ValueError("epochs must be integers")
            if not all(0 <= v <= MAX_EPOCH for v in ints):
                raise ValueError("epoch out of range")
            if voted_for is not None and not isinstance(voted_for, str):
                raise ValueError("voted_for")
            if voted_shard is not None and (
                isinstance(voted_shard, bool) or not isinstance(voted_shard, int)
            ):
                raise ValueError("voted_shard")
            return VoteState(voted_epoch, voted_for, voted_shard), epoch
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return VoteState(), 0

    def observe_epoch(self, epoch: int) -> None:
        """Another sentinel (or the layout) is at `epoch`: mine is never behind it."""
        self.failover_epoch = max(self.failover_epoch, epoch)

    def next_epoch(self, config_epoch: int) -> int:
        """The failover epoch of a new candidacy: above every epoch seen or voted in."""
        self.failover_epoch = max(self.failover_epoch, self.vote.voted_epoch, config_epoch) + 1
        return self.failover_epoch

    def record(self, vote: VoteState) -> None:
        """Persist a granted vote (fsync) before it is published."""
        self.vote = vote
        self.failover_epoch = max(self.failover_epoch, vote.voted_epoch)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {
            "voted_epoch": self.vote.voted_epoch,
            "voted_for": self.vote.voted_for,
            "voted_shard": self.vote.voted_shard,
            "failover_epoch": self.failover_epoch,
        }
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
