"""The Faust partition assignor that hands whole shards to members (streams/assignor.py
decides which): part of the Faust seam (streams/faust_app.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.assignor.client_assignment import ClientAssignment
from faust.assignor.partition_assignor import PartitionAssignor

from streams.assignor import place


def shard_assignor(shard_of_topic: Mapping[str, str],
                   weights: Mapping[str, float] | None = None,
                   state_topic: str | None = None,
                   state_partition: Mapping[str, int] | None = None
                   ) -> type[PartitionAssignor]:
    """Faust's assignor, with whole shards handed to members (topics the map lacks form
    one more shard, named by the empty string); ``weights``, a live mapping, gives each
    shard's traffic as this worker last saw it. A shard's partition of ``state_topic``, the
    state table's changelog (``state_partition``: shard -> partition), goes to its owner."""
    partition_of: Mapping[str, int] = state_partition or {}

    class ShardAssignor(PartitionAssignor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._previous: dict[str, set[str]] = {}

        def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
            # the shards each member held before this rebalance (sticky ownership)
            self._previous = {}
            for member_id, metadata in member_metadata.items():
                before = self._get_client_metadata(metadata).assignment
                if before is not None:
                    self._previous[member_id] = {shard_of_topic.get(t, "")
                                                 for t, p in before.actives.items()
                                                 if p and t != state_topic}
            return super()._perform_assignment(cluster, member_metadata)

        def _protocol_assignments(self, assignments: Any, cl_distribution: Any,
                                  tp_distribution: Any, topic_groups: Any) -> Any:
            merged: dict[str, set[int]] = {}
            for a in assignments.values():
                for topic, partitions in a.actives.items():
                    if topic != state_topic:
                        merged.setdefault(topic, set()).update(partitions)
            owner = place({shard_of_topic.get(t, "") for t in merged}, list(assignments),
                          self._previous, weights)
            whole = {m: ClientAssignment(
                actives={t: sorted(p) for t, p in sorted(merged.items())
                         if owner[shard_of_topic.get(t, "")] == m},
                standbys={}) for m in assignments}
            if state_topic is not None:
                for shard, m in owner.items():
                    if shard in partition_of:
                        whole[m].actives.setdefault(state_topic, []).append(
                            partition_of[shard])
            return super()._protocol_assignments(whole, cl_distribution, tp_distribution,
                                                  topic_groups)

    return ShardAssignor
