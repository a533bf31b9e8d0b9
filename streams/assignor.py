"""Workers share the input by shard: every partition of a shard's topics goes to one worker.

A shard is a group of topic families no KPI spans (``Catalog.shards``: email, web, social,
crm + spend by default), so its state is independent of every other shard's. Within a
shard the state spans partitions (unique openers, sessions and deals cross them, and the
watermark is the minimum over them), so a shard is never split. Splitting one shard over
workers needs input repartitioned by key with a merge stage (docs/semantics.md).

Shards are spread by traffic: the leader weighs each by the messages in its topics' logs
(``weights``) and hands the heaviest first to the least loaded member. Without weights they
are spread evenly by count, and a shard stays with the member that held it while that
member has room. A member with no shard stands by. When a member stops or dies, its shards
go to the others, which continue from their latest durable snapshots: a shard's partition
of the state table's changelog goes with it, so Faust recovers it on the new owner
(streams/faust_app.py: StateTable). The Faust assignor that applies it is in
streams/faust_assignor.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def place(shards: Iterable[str], members: list[str], previous: Mapping[str, set[str]],
          weights: Mapping[str, float] | None = None) -> dict[str, str]:
    """Shard -> member. With weights (a shard's traffic), heaviest shard first to the member
    with the least weight so far (ties: its previous member, then by name). Without, loads
    differ by at most one shard and a shard keeps its previous member whenever that balance
    allows. Deterministic: members and shards are taken sorted."""
    shards = sorted(shards)
    members = sorted(members)
    if weights and any(weights.get(s, 0) > 0 for s in shards):
        return _by_weight(shards, members, previous, weights)
    base, extra = divmod(len(shards), len(members))
    load = dict.fromkeys(members, 0)
    owner: dict[str, str] = {}

    def take(shard: str, member: str) -> None:
        nonlocal extra
        if load[member] == base:
            extra -= 1
        load[member] += 1
        owner[shard] = member

    for shard in shards:
        held_by = [m for m in members if shard in previous.get(m, ())]
        if held_by:
            m = held_by[0]
            if load[m] < base or (load[m] == base and extra > 0):
                take(shard, m)
    for shard in shards:
        if shard not in owner:
            take(shard, min(members, key=lambda m: (load[m], m)))
    return owner


def _by_weight(shards: list[str], members: list[str], previous: Mapping[str, set[str]],
               weights: Mapping[str, float]) -> dict[str, str]:
    load = dict.fromkeys(members, 0.0)
    count = dict.fromkeys(members, 0)  # shards with no traffic yet still spread
    owner: dict[str, str] = {}
    for shard in sorted(shards, key=lambda s: (-weights.get(s, 0), s)):
        held = {m for m in members if shard in previous.get(m, ())}
        m = min(members, key=lambda m: (load[m], count[m], m not in held, m))
        owner[shard] = m
        load[m] += weights.get(shard, 0)
        count[m] += 1
    return owner
