"""The worker's group member id, remembered across restarts.

A worker killed and started again would join its group as a new member; the coordinator
then waits for the dead member's session to expire before it can hand out the shards (the
new member joins that generation, and its SyncGroup is held until the old one times out:
~5 s of a restart's 16 s, docs/benchmarks.md). Rejoining under the id the dead process had
lets the coordinator rebalance at once: to it, the member simply came back. A coordinator
that no longer knows the id (its session expired, or it left cleanly) answers
UNKNOWN_MEMBER_ID, and the client joins as a new member: nothing is lost but a round trip.

Unlike static membership (``--instance-id``), a stopped worker still leaves the group at
once, so a scale-in hands its shards over without waiting for a session timeout.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("kpi_engine.worker")

#: ids the Kafka protocol allows (GroupCoordinator-made ids are far shorter)
MAX_ID_LEN = 1024


class MemberMemory:
    """The member id of this worker's last join, in a file of its data directory.

    The file names the host and the directory it was written for: a data directory copied
    elsewhere to start another worker must not make two live members share one id."""

    def __init__(self, path: Path):
        self.path = path
        self.owner = f"{socket.gethostname()}:{path.resolve()}"
        self.kept: str | None = None

    def recall(self) -> str | None:
        try:
            owner, member_id = self.path.read_text(encoding="utf-8").split("\n")[:2]
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if owner != self.owner or not member_id or len(member_id) > MAX_ID_LEN \
                or not member_id.isprintable():
            return None
        self.kept = member_id
        return member_id

    def keep(self, member_id: str) -> None:
        """Write the id of a join (atomically, once per change of id)."""
        if not member_id or member_id == self.kept:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(f"{self.owner}\n{member_id}\n", encoding="utf-8")
            os.replace(tmp, self.path)
            self.kept = member_id
        except OSError as exc:  # a restart then joins as a new member: slower, not wrong
            log.warning("could not remember the group member id in %s: %s", self.path, exc)
