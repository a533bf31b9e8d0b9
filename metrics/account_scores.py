"""Per-account scores (CONTRACT.md §3: topic `kpi-accounts`, key `account_id`, latest wins;
HTTP `/accounts`): each account's RFM, lifetime value and lead score as of the end of the
accounts stage's newest closed longest window, the moment `rfm_segment_share` counts it at
(docs/catalog.md).

A record changes only when the account's purchases, its scores or its whole-number lead
score do: its last purchase is a time, not a recency that would change every hour. An
account with no purchase in the horizon and no engagement in the lookback gets a last record
with no scores (``rfm_segment`` and ``lead_score`` null): it is no longer scored.
"""

from __future__ import annotations

from typing import Any, Final

from metrics.constants import NEVER
from metrics.records import iso_ms
from metrics.trackers.account_purchases import YEAR_MS, AccountPurchases, Rfm
from metrics.trackers.lead_scoring import LeadScoring

Record = dict[str, Any]
_RFM_NONE: Final = dict.fromkeys(
    ("last_purchase", "frequency", "monetary", "recency_score", "frequency_score",
     "monetary_score", "rfm_segment", "lifetime_value"))


class AccountScores:
    def __init__(self, currency: str, lifespan_years: float = 3.0):
        self.currency = currency
        #: an account's lifetime value: its yearly purchases times this (the catalog's
        #: `customer_lifetime_value` scale)
        self.lifespan_years = lifespan_years
        #: account -> its latest record (what /accounts serves)
        self.latest: dict[str, Record] = {}
        #: account -> what its record's fields but ``as_of`` and ``emitted_at`` are made of
        #: (the segment and lifetime value follow from them), as last sent: a record is built
        #: and sent only for an account whose inputs changed (most are the same each hour)
        self._inputs: dict[str, tuple[Any, ...]] = {}
        self.as_of = NEVER

    def update(self, purchases: AccountPurchases | None, at: int, emitted_at: str,
               scoring: LeadScoring | None = None) -> list[tuple[str, Record]]:
        """The records of the accounts whose scores changed as of ``at`` (later than the
        last call's, else nothing), and of those no longer scored."""
        if at <= self.as_of:
            return []
        self.as_of = at
        rfm = purchases.rfm(at) if purchases is not None else {}
        leads = scoring.scores(at) if scoring is not None else {}
        moved = scoring.board.take_moved() if scoring is not None else set()
        out: list[tuple[str, Record]] = []
        as_of = iso_ms(at)
        years = purchases.horizon_ms / YEAR_MS if purchases is not None else 1.0
        changed: list[str] = []
        if moved is None or not self.latest:  # scored all over again, or nothing shown yet
            moved = set(leads)
        # an account that left both is in neither: its record ends below
        for account in rfm.keys() | (moved & leads.keys()):
            s = rfm.get(account)
            inputs = (leads.get(account, 0),) if s is None else (
                leads.get(account, 0), s.last_ts, s.frequency, s.monetary, s.r, s.f, s.m)
            if self._inputs.get(account) != inputs:
                self._inputs[account] = inputs
                changed.append(account)
        for account in sorted(changed):
            s = rfm.get(account)
            rec: Record = {"account_id": account, "as_of": as_of,
                           **(self._rfm(s, years) if s is not None else _RFM_NONE),
                           "currency": self.currency, "lead_score": leads.get(account, 0),
                           "emitted_at": emitted_at}
            self.latest[account] = rec  # its inputs changed: so did one of its fields
            out.append((account, rec))
        for account in sorted(self.latest.keys() - rfm.keys() - leads.keys()):
            del self.latest[account], self._inputs[account]
            out.append((account, {"account_id": account, "as_of": as_of,
                                  "rfm_segment": None, "lead_score": None,
                                  "emitted_at": emitted_at}))
        return out

    def _rfm(self, s: Rfm, years: float) -> Record:
        return {"last_purchase": iso_ms(s.last_ts), "frequency": s.frequency,
                "monetary": s.monetary, "recency_score": s.r, "frequency_score": s.f,
                "monetary_score": s.m, "rfm_segment": s.segment,
                # seed 003: average purchase × purchases a year × years = yearly revenue × years
                "lifetime_value": round(s.monetary / years * self.lifespan_years, 2)}
