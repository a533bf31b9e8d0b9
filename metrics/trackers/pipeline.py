"""The deal pipeline as a state machine: leads and deals, stage entries, attribution to the
lead's channel and campaign, the sales cycle, and new customers (an account's first won
deal).

A deal's facts are a pure function of the set of its stage events, so arrival order never
matters (docs/semantics.md, "Pipeline"):

- its **last** stage (by event time) decides whether it is won or lost: a deal counts as won
  once, from the time it last became won, with the amount of its latest event; a reopened
  deal (lost, then an open stage) leaves lost, and a won deal reopened leaves won;
- a stage counts as entered at the first time the deal reached it; stages skipped on the way
  up (lead -> opportunity) are passed through at that time, so stage conversion never
  exceeds 100 %; stages below the deal's first one are not (a deal created at "sql" never
  was a lead in this CRM); a regression (opportunity -> sql) takes nothing back;
- a deal advanced from a stage when it reached the next one (from proposal: when it is won).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from metrics.constants import DAY_MS, MICRO, UNKNOWN
from metrics.events import DEAL_STAGES, Event
from metrics.trackers.base import Dims, Fact, Keyed, Table, TableFactory, net_change

_DEAL_DIMS: Final = frozenset({"channel", "campaign_id"})

STAGE_INDEX: Final = {s: i for i, s in enumerate(DEAL_STAGES)}
_OPEN: Final = DEAL_STAGES[:STAGE_INDEX["won"]]  # lead .. proposal
_TOP_OPEN: Final = len(_OPEN) - 1
WON, _LOST = STAGE_INDEX["won"], STAGE_INDEX["lost"]
_OPPORTUNITY = STAGE_INDEX["opportunity"]

#: one stage event: (ts, stage index, amount in millionths); the order breaks ties
Step = tuple[int, int, int]


class Deal(msgspec.Struct, gc=False):
    #: every stage event of the deal, sorted (a set: the same step twice is one)
    history: list[Step] = []
    #: earliest (ts, channel, campaign) the deal's own events carry
    fallback: tuple[int, str, str] | None = None
    lead_id: str | None = None
    account_id: str | None = None
    last_ts: int = 0
    #: format 1 (before the state machine): stage -> (first ts, amount); read, then folded
    #: into ``history`` by ``Pipeline.loaded``
    entries: dict[str, tuple[int, int]] = {}


#: account -> its won deals: deal -> (won ts, dims)
Wins = dict[str, tuple[int, Dims]]


class PipelineState(msgspec.Struct, gc=False):
    version: int
    leads: dict[str, tuple[int, str, str]]  # lead -> (ts, channel, campaign)
    deals: dict[str, Deal]
    #: deal -> the facts it contributes now (what the next change retracts)
    facts: dict[str, list[Fact]]
    accounts: dict[str, tuple[Wins, list[Fact]]] = {}


class Pipeline:
    """Leads, deals and accounts. A deal's facts (and an account's) are recomputed whenever
    its events or its lead change; the difference is applied as retractions and additions.

    State lives for ``horizon_ms`` from its last event: the family's ``horizon`` (default
    365 days for crm), so a deal won a year after its lead keeps the lead's channel, and a
    deal reopened months after it was won counts once."""

    name: ClassVar[str] = "pipeline"
    family: ClassVar[str] = "crm"
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "deals_entered": _DEAL_DIMS | {"stage"},
        "deals_advanced": _DEAL_DIMS | {"stage"},
        "opportunities": _DEAL_DIMS,
        "deals_won": _DEAL_DIMS,
        "deals_lost": _DEAL_DIMS,
        "won_amount": _DEAL_DIMS,
        "won_amount_sq": _DEAL_DIMS,
        "cycle_days_sum": _DEAL_DIMS,
        "cycle_days_sq": _DEAL_DIMS,
        "cycle_deals": _DEAL_DIMS,
        "new_customers": _DEAL_DIMS,
    }
    consumes: ClassVar[frozenset[str]] = frozenset({"lead.created", "deal.stage_changed"})
    #: sums in millionths; ``_sq``: of the squares (a mean's interval)
    micro: ClassVar[frozenset[str]] = frozenset({"won_amount", "won_amount_sq", "cycle_days_sum",
                                                 "cycle_days_sq"})
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = PipelineState
    part_types: ClassVar[dict[str, Any]] = {
        "leads": dict[str, tuple[int, str, str]],
        "deals": dict[str, tuple[Deal, list[Fact]]],
        "accounts": dict[str, tuple[Wins, list[Fact]]]}
    VERSION: ClassVar[int] = 2

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: lead -> (ts, channel, campaign)
        self.leads: Table[str, tuple[int, str, str]] = Keyed(_lead_ts)
        #: deal -> its state, and the facts it contributes now (what the next change
        #: retracts), filed by its last event
        self.deals: Table[str, tuple[Deal, list[Fact]]] = Keyed(_deal_ts)
        #: account -> its won deals and the new-customer fact they make, filed by its
        #: latest win (a deal with no account is its own account)
        self.accounts: Table[str, tuple[Wins, list[Fact]]] = Keyed(_account_ts)
        self.deals_by_lead: dict[str, set[str]] = {}

    def spill(self, make: TableFactory) -> None:
        """Its leads, deals and accounts, kept for the horizon (a year): on disk (a
        worker's). A value read is changed, then put back, before the next read of its
        table; the index of deals by lead stays in memory (``loaded`` rebuilds it). Read at
        the CRM's pace: small caches (``cold``)."""
        self.leads = make(f"{self.name}.leads", _lead_ts, str, tuple[int, str, str], cold=True)
        self.deals = make(f"{self.name}.deals", _deal_ts, str, tuple[Deal, list[Fact]],
                          _folded, cold=True)
        self.accounts = make(f"{self.name}.accounts", _account_ts, str,
                             tuple[Wins, list[Fact]], cold=True)

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        if ev.type == "lead.created":
            return self.lead(d.lead_id, ev.ts_ms, d.channel, d.campaign_id or UNKNOWN)
        return self.deal(d, ev.ts_ms)

    def lead(self, lead_id: str, ts: int, channel: str, campaign: str) -> list[Fact]:
        info = (ts, channel, campaign)
        cur = self.leads.get(lead_id)
        if cur is not None and cur <= info:
            return []
        self.leads.put(lead_id, info)
        out: list[Fact] = []
        for deal_id in sorted(self.deals_by_lead.get(lead_id, ())):
            out += self._refresh(deal_id)
        return out

    def deal(self, data: Any, ts: int) -> list[Fact]:
        """A deal.stage_changed event (``data``: its struct, metrics.events)."""
        deal_id: str = data.deal_id
        d, facts = self.deals.get(deal_id) or (Deal([]), [])
        step = step_of(data, ts)
        insert_step(d.history, step)
        fb = (ts, data.channel or UNKNOWN, data.campaign_id or UNKNOWN)
        if d.fallback is None or fb < d.fallback:
            d.fallback = fb
        lead_id = data.lead_id
        if lead_id is not None and (d.lead_id is None or lead_id < d.lead_id):
            if d.lead_id is not None:
                self.deals_by_lead.get(d.lead_id, set()).discard(deal_id)
            d.lead_id = lead_id
            self.deals_by_lead.setdefault(lead_id, set()).add(deal_id)
        account = data.account_id
        if account is not None and (d.account_id is None or account < d.account_id):
            if d.account_id is not None:  # the deal moves to another account: leave the old
                out = self._set_win(d.account_id, deal_id, None)
            else:
                out = self._set_win(f"deal:{deal_id}", deal_id, None)
            d.account_id = account
        else:
            out = []
        d.last_ts = max(d.last_ts, ts)
        self.deals.put(deal_id, (d, facts))  # changed in place: put back (a table on disk)
        return out + self._refresh(deal_id)

    def _refresh(self, deal_id: str) -> list[Fact]:
        held = self.deals.get(deal_id)
        assert held is not None  # a deal a lead names, or one just put
        d, before = held
        after, win = self._deal_facts(d)
        out = self._set_win(_account_of(deal_id, d), deal_id, win)
        if after == before:
            return out
        self.deals.put(deal_id, (d, after))
        return out + net_change(before, after)

    def _set_win(self, account: str, deal_id: str, win: tuple[int, Dims] | None) -> list[Fact]:
        """Record (or drop) a deal's win under its account; returns the change in the
        account's new-customer fact."""
        held = self.accounts.get(account)
        wins, before = held if held is not None else ({}, [])
        if wins.get(deal_id) == win:
            return []
        if win is None:
            del wins[deal_id]
        else:
            wins[deal_id] = win
        if not wins:
            if held is not None:
                self.accounts.delete(account)
            return net_change(before, [])
        ts, dims = min(wins.values())
        after: list[Fact] = [(ts, "new_customers", dims, 1)]
        self.accounts.put(account, (wins, after))
        return net_change(before, after)

    def _deal_facts(self, d: Deal) -> tuple[list[Fact], tuple[int, Dims] | None]:
        """The deal's facts, and its win (ts, dims) when its last stage is won."""
        lead = self.leads.get(d.lead_id) if d.lead_id is not None else None
        assert d.fallback is not None
        _, channel, campaign = lead if lead is not None else d.fallback
        dims: Dims = (("campaign_id", campaign), ("channel", channel))
        reached: dict[int, int] = {}  # open stage -> when the deal first reached it
        top = -1
        for ts, stage, _ in d.history:
            if stage < WON and top < 0:  # the deal's first open stage: entered alone
                reached[stage] = ts
                top = stage
            elif top >= 0 and stage != _LOST:  # up (won: through proposal), passing skips
                target = min(stage, _TOP_OPEN)
                for s in range(top + 1, target + 1):
                    reached.setdefault(s, ts)
                top = max(top, target)
        last_stage, since, amount = outcome(d.history)
        facts: list[Fact] = []
        for s, ts in sorted(reached.items()):
            facts.append((ts, "deals_entered", (*dims, ("stage", DEAL_STAGES[s])), 1))
            if s + 1 in reached:
                facts.append((reached[s + 1], "deals_advanced",
                              (*dims, ("stage", DEAL_STAGES[s])), 1))
            if s == _OPPORTUNITY:
                facts.append((ts, "opportunities", dims, 1))
        win: tuple[int, Dims] | None = None
        if last_stage == WON:
            if _TOP_OPEN in reached:
                facts.append((since, "deals_advanced", (*dims, ("stage", _OPEN[-1])), 1))
            facts.append((since, "deals_entered", (*dims, ("stage", "won")), 1))
            facts.append((since, "deals_won", dims, 1))
            facts.append((since, "won_amount", dims, amount))
            facts.append((since, "won_amount_sq", dims, round(amount * amount / MICRO)))
            lead_ts = lead[0] if lead is not None else next(
                (ts for ts, stage, _ in d.history if stage == 0), None)
            if lead_ts is not None and lead_ts <= since:
                facts.append((since, "cycle_days_sum", dims,
                              round((since - lead_ts) * MICRO / DAY_MS)))
                days = (since - lead_ts) / DAY_MS
                facts.append((since, "cycle_days_sq", dims, round(days * days * MICRO)))
                facts.append((since, "cycle_deals", dims, 1))
            win = (since, dims)
        elif last_stage == _LOST:
            facts.append((since, "deals_entered", (*dims, ("stage", "lost")), 1))
            facts.append((since, "deals_lost", dims, 1))
        return facts, win

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its facts are final as they come")

    def expire(self, watermark: int) -> None:
        cutoff = watermark - self.horizon_ms
        self.leads.drop(cutoff)
        # an expired deal leaves its account's wins alone: the account stays a customer
        for deal_id, (d, _) in self.deals.sweep(cutoff):
            if d.lead_id is not None:
                linked = self.deals_by_lead.get(d.lead_id)
                if linked is not None:
                    linked.discard(deal_id)
                    if not linked:
                        del self.deals_by_lead[d.lead_id]
        self.accounts.drop(cutoff)

    def snapshot(self) -> PipelineState:
        deals = self.deals.data
        return PipelineState(self.VERSION, self.leads.data, {k: d for k, (d, _) in deals.items()},
                             {k: f for k, (_, f) in deals.items() if f}, self.accounts.data)

    def restore(self, state: PipelineState) -> None:
        self.leads.replace(state.leads)
        self.deals.replace({k: (d, state.facts.get(k, [])) for k, d in state.deals.items()})
        self.accounts.replace(state.accounts)
        self.loaded()

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"leads": self.leads, "deals": self.deals, "accounts": self.accounts}

    def loaded(self) -> None:
        self.deals_by_lead = {}
        for deal_id, held in self.deals.data.items():
            d, _ = _folded(held)
            if d.lead_id is not None:
                self.deals_by_lead.setdefault(d.lead_id, set()).add(deal_id)

    def __len__(self) -> int:
        return len(self.deals) + len(self.leads) + len(self.accounts)


def _folded(held: tuple[Deal, list[Fact]]) -> tuple[Deal, list[Fact]]:
    """A deal as read from its state: format 1's first entry per stage folded into its
    ``history``, in place."""
    d = held[0]
    if d.entries and not d.history:
        d.history = sorted((ts, STAGE_INDEX[s], a) for s, (ts, a) in d.entries.items())
        d.entries = {}
    return held


def outcome(history: list[Step]) -> tuple[int, int, int]:
    """A deal's last stage, when it last entered it, and its latest amount (millionths)."""
    last_stage = history[-1][1]
    since = history[-1][0]
    for ts, stage, _ in reversed(history):
        if stage != last_stage:
            break
        since = ts
    return last_stage, since, history[-1][2]


def step_of(data: Any, ts: int) -> Step:
    """A deal.stage_changed event's step (``data``: its struct, metrics.events)."""
    amount = data.amount
    return ts, STAGE_INDEX[data.stage], round(amount * MICRO) if amount is not None else 0


def deal_account(current: str | None, named: str | None) -> str | None:
    """A deal's account whatever order its events come in: the smallest one they name."""
    return named if named is not None and (current is None or named < current) else current


def insert_step(history: list[Step], step: Step) -> None:
    """Insert in order; the same step twice (a resend under a new event id) is one."""
    i = len(history)
    while i and history[i - 1] > step:
        i -= 1
    if not i or history[i - 1] != step:
        history.insert(i, step)


def _account_of(deal_id: str, d: Deal) -> str:
    return d.account_id if d.account_id is not None else f"deal:{deal_id}"


def _lead_ts(lead: tuple[int, str, str]) -> int:
    return lead[0]


def _deal_ts(held: tuple[Deal, list[Fact]]) -> int:
    return held[0].last_ts


def _account_ts(held: tuple[Wins, list[Fact]]) -> int:
    return max(ts for ts, _ in held[0].values())
