"""One worker of a consumer group owns every input partition; the others stand by.

The KPI core keeps one state over all partitions (unique openers, sessions and deals span
them, and the watermark is the minimum over them), so splitting partitions across workers
would split that state. Until input is repartitioned by key with a merge stage (the
scale-out design in docs/semantics.md), workers form an active-standby group: when the
owner stops or dies, the group hands everything to another member, which continues from
the latest durable snapshot (streams/state.py). The owner stays the owner across
rebalances while it is alive, so a joining standby does not move the work.
"""

from __future__ import annotations

from typing import Any

from faust.assignor.client_assignment import ClientAssignment
from faust.assignor.partition_assignor import PartitionAssignor


class SingleOwnerAssignor(PartitionAssignor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._previous_owners: set[str] = set()

    def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
        # members that held input partitions before this rebalance (sticky ownership)
        owners = set()
        for member_id, metadata in member_metadata.items():
            previous = self._get_client_metadata(metadata).assignment
            if previous is not None and any(previous.actives.values()):
                owners.add(member_id)
        self._previous_owners = owners
        return super()._perform_assignment(cluster, member_metadata)

    def _protocol_assignments(self, assignments: Any, cl_distribution: Any,
                              tp_distribution: Any, topic_groups: Any) -> Any:
        members = sorted(assignments)
        sticky = [m for m in members if m in self._previous_owners]
        owner = sticky[0] if sticky else members[0]
        merged: dict[str, set[int]] = {}
        for a in assignments.values():
            for topic, partitions in a.actives.items():
                merged.setdefault(topic, set()).update(partitions)
        single = {m: ClientAssignment(
            actives={t: sorted(p) for t, p in merged.items()} if m == owner else {},
            standbys={}) for m in members}
        return super()._protocol_assignments(single, cl_distribution, tp_distribution,
                                              topic_groups)
