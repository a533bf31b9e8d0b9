"""Email responses by send cohort: a delivery, open, click, bounce or unsubscribe counts toward the
send it answers, in the pane of that send, so an email rate never exceeds 100 % (CONTRACT.md
§2 "Email rates by send cohort").

A (campaign, contact) keeps its sends and responses within the horizon. A response answers
the latest send of its campaign to its contact at or before it; each send counts once per
kind of response (a send opened three times is one opened send). A response with no send
before it (sent before the horizon, or not seen) counts in no cohort. A send arriving after
its responses takes them over: the facts are a function of the set of events, whatever their
order, and the send's closed windows are revised as its responses come.

Per campaign it also keeps a lifetime tally (sent, and the sends answered per kind, since the
campaign's first send): the campaign scorecard (metrics/scorecards.py). A campaign silent
for ``SCORECARD_HORIZON_MS`` is forgotten.
"""

from __future__ import annotations

import sys
from bisect import insort
from typing import Any, ClassVar, Final

import msgspec

from metrics.constants import DAY_MS, UNKNOWN
from metrics.events import Event
from metrics.trackers.base import Dims, DimsMemo, Fact, Keyed, Table, TableFactory, net_change

_EMAIL_DIMS: Final = frozenset({"campaign_id", "segment"})

Key = tuple[str, str]  # (campaign_id, contact_id)

#: response kind -> the builtin counting the sends it answered
_BUILTIN: Final = {"delivered": "cohort_delivered", "opened": "cohort_opened",
                   "clicked": "cohort_clicked",
                   "bounced": "cohort_bounced", "hard": "cohort_hard_bounced",
                   "unsubscribed": "cohort_unsubscribed"}


#: a response's event type -> its kind: one string per kind, held by every response (a
#: kind cut from the type each time was a string per response, 55 bytes)
_KIND: Final = {f"email.{k}": k for k in ("delivered", "opened", "clicked", "bounced",
                                          "unsubscribed")}
#: a kind -> the one string of it (those decoded from disk are strings of their own)
_KINDS: Final = {k: k for k in (*_KIND.values(), "hard")}

#: tally slots: sent, then the sends answered per builtin
SLOTS: Final = ("sent", *_BUILTIN.values())
_SLOT: Final = {b: i for i, b in enumerate(SLOTS)}
#: how long a silent campaign's scorecard is kept
SCORECARD_HORIZON_MS: Final = 365 * DAY_MS


class Tally(msgspec.Struct, array_like=True, gc=False):
    """A campaign's lifetime: its first send (0: none yet), its latest event, and per slot
    (``SLOTS``) its count."""
    first: int
    last: int
    counts: list[int]


class Cohort(msgspec.Struct, array_like=True, gc=False):
    #: (send time, its dims), in time order
    sends: list[tuple[int, Dims]]
    #: (response time, kind), in time order
    responses: list[tuple[int, str]]


class CohortsState(msgspec.Struct, gc=False):
    version: int
    cohorts: dict[Key, Cohort]
    campaigns: dict[str, Tally] = {}


class SendCohorts:
    """Sends answered, per kind of response, counted at their send."""

    name: ClassVar[str] = "send_cohorts"
    family: ClassVar[str] = "email"
    builtins: ClassVar[dict[str, frozenset[str]]] = {b: _EMAIL_DIMS for b in _BUILTIN.values()}
    consumes: ClassVar[frozenset[str]] = frozenset({
        "email.sent", "email.delivered", "email.opened", "email.clicked", "email.bounced",
        "email.unsubscribed"})
    micro: ClassVar[frozenset[str]] = frozenset()
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = CohortsState
    part_types: ClassVar[dict[str, Any]] = {"cohorts": dict[Key, Cohort],
                                            "campaigns": dict[str, Tally]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: (campaign, contact) -> its sends and responses, filed by the latest of them
        self.cohorts: Table[Key, Cohort] = Keyed(_latest)
        #: campaign -> its lifetime tally, filed by its latest event
        self.campaigns: Keyed[str, Tally] = Keyed(_tally_last)
        self._dims = DimsMemo()  # a send's dims: one tuple per campaign and segment

    def spill(self, make: TableFactory) -> None:
        """Its cohorts, one per (campaign, contact) reached: on disk (a worker's)."""
        self.cohorts = make(f"{self.name}.cohorts", _latest, Key, Cohort, self._canon)

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        # one string per campaign in the keys held (each event decodes its own)
        key = (sys.intern(d.campaign_id), d.contact_id)
        ts = ev.ts_ms
        c = self.cohorts.get(key)
        if c is None:  # filed once, with its first event in it
            c = Cohort([], [])
            changes = self._in_order(c, ev, ts)
            self.cohorts.put(key, c)
            self._tally(d.campaign_id, ts, ev.type == "email.sent", changes)
            return changes
        latest = _latest(c)
        self._prune(c, max(ts, latest))
        if ts > latest or (ts == latest and ev.type != "email.sent"):
            changes = self._in_order(c, ev, ts)  # the common case, without recounting
            self.cohorts.touch(key)
            self._tally(d.campaign_id, ts, ev.type == "email.sent", changes)
            return changes
        before = _facts(c)
        if ev.type == "email.sent":
            insort(c.sends, (ts, self._dims(_send_dims(d))))
        else:
            kind = _KIND[ev.type]
            insort(c.responses, (ts, kind))
            if kind == "bounced" and d.bounce == "hard":
                insort(c.responses, (ts, "hard"))
        self.cohorts.touch(key)
        after = _facts(c)
        changes = net_change(before, after) if after != before else []
        self._tally(d.campaign_id, ts, ev.type == "email.sent", changes)
        return changes

    def _in_order(self, c: Cohort, ev: Event, ts: int) -> list[Fact]:
        """An event at or after everything its cohort holds: a send answers nothing yet; a
        response answers the latest send, a new fact if that send had no such response."""
        d = ev.data
        if ev.type == "email.sent":
            c.sends.append((ts, self._dims(_send_dims(d))))
            return []
        kind = _KIND[ev.type]
        kinds = [kind, "hard"] if kind == "bounced" and d.bounce == "hard" else [kind]
        out: list[Fact] = []
        if c.sends:
            send_ts, dims = c.sends[-1]
            seen = set()
            for r_ts, r_kind in reversed(c.responses):
                if r_ts < send_ts:
                    break
                seen.add(r_kind)
            out = [(send_ts, _BUILTIN[k], dims, 1) for k in kinds if k not in seen]
        for k in kinds:
            insort(c.responses, (ts, k))
        return out

    def _tally(self, campaign: str, ts: int, sent: bool, changes: list[Fact]) -> None:
        t = self.campaigns.get(campaign)
        if t is None:
            t = Tally(0, ts, [0] * len(SLOTS))
            self.campaigns.put(campaign, t)
        t.last = max(t.last, ts)
        if sent:
            t.first = ts if not t.first else min(t.first, ts)
            t.counts[0] += 1
        for _, builtin, _, delta in changes:
            t.counts[_SLOT[builtin]] += delta
        self.campaigns.touch(campaign)

    def scorecards(self) -> dict[str, Tally]:
        """Campaign -> its lifetime tally (live: read it before the next event)."""
        return self.campaigns.data

    def _prune(self, c: Cohort, latest: int) -> None:
        """Forget what lies beyond the horizon behind the latest event of its key (before
        the facts are compared: what is forgotten keeps the facts it made)."""
        cutoff = latest - self.horizon_ms
        if c.sends and c.sends[0][0] < cutoff:
            c.sends = [s for s in c.sends if s[0] >= cutoff]
        if c.responses and c.responses[0][0] < cutoff:
            c.responses = [r for r in c.responses if r[0] >= cutoff]

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its facts are final as they come")

    def expire(self, watermark: int) -> None:
        self.cohorts.drop(watermark - self.horizon_ms)
        self.campaigns.sweep(watermark - SCORECARD_HORIZON_MS)

    def snapshot(self) -> CohortsState:
        return CohortsState(self.VERSION, self.cohorts.data, self.campaigns.data)

    def restore(self, state: CohortsState) -> None:
        self.cohorts.replace(state.cohorts)
        self.campaigns.replace(state.campaigns)

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"cohorts": self.cohorts, "campaigns": self.campaigns}

    def loaded(self) -> None:
        """Decoded apart, every send held its own dims: one tuple each again."""
        for c in self.cohorts.resident():
            self._canon(c)

    def _canon(self, c: Cohort) -> Cohort:
        """A cohort decoded apart, its dims and kinds the ones shared by the others."""
        memo = self._dims
        c.sends = [(ts, memo(d)) for ts, d in c.sends]
        c.responses = [(ts, _KINDS.get(k, k)) for ts, k in c.responses]
        return c

    def __len__(self) -> int:
        return len(self.cohorts)


def _send_dims(d: Any) -> Dims:
    """A send's dims (``d``: an email.sent event's struct)."""
    return (("campaign_id", d.campaign_id), ("segment", d.segment or UNKNOWN))


def _latest(c: Cohort) -> int:
    return max(c.sends[-1][0] if c.sends else 0, c.responses[-1][0] if c.responses else 0)


def _tally_last(t: Tally) -> int:
    return t.last


def _facts(c: Cohort) -> list[Fact]:
    """One fact per send and kind of response it received."""
    sends, responses = c.sends, c.responses
    if not sends or not responses:
        return []
    out: list[Fact] = []
    j = 0
    n = len(responses)
    for i, (ts, dims) in enumerate(sends):
        nxt = sends[i + 1][0] if i + 1 < len(sends) else None
        while j < n and responses[j][0] < ts:
            j += 1  # before this send: answered an earlier one, or none
        kinds: set[str] = set()
        while j < n and (nxt is None or responses[j][0] < nxt):
            kinds.add(responses[j][1])
            j += 1
        out += [(ts, _BUILTIN[k], dims, 1) for k in sorted(kinds)]
    return out
