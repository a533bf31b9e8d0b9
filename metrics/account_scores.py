"""Per-account scores (CONTRACT.md §3: topic `kpi-accounts`, key `account_id`, latest wins;
HTTP `/accounts`): each account's RFM as of the end of the accounts stage's newest closed
longest window, the moment `rfm_segment_share` counts it at (docs/catalog.md).

A record changes only when the account's purchases or its scores do: its last purchase is
a time, not a recency that would change every hour. An account whose purchases all left
the horizon gets a last record with no scores (``rfm_segment: null``): it is no longer
scored.
"""

from __future__ import annotations

from typing import Any

from metrics.constants import NEVER
from metrics.records import iso_ms
from metrics.trackers.account_purchases import AccountPurchases

Record = dict[str, Any]
_STABLE = ("last_purchase", "frequency", "monetary", "recency_score", "frequency_score",
           "monetary_score", "rfm_segment")


class AccountScores:
    def __init__(self, currency: str):
        self.currency = currency
        #: account -> its latest record (what /accounts serves)
        self.latest: dict[str, Record] = {}
        self.as_of = NEVER

    def update(self, purchases: AccountPurchases, at: int, emitted_at: str
               ) -> list[tuple[str, Record]]:
        """The records of the accounts whose scores changed as of ``at`` (later than the
        last call's, else nothing), and of those no longer scored."""
        if at <= self.as_of:
            return []
        self.as_of = at
        out: list[tuple[str, Record]] = []
        scores = purchases.rfm(at)
        as_of = iso_ms(at)
        for account, s in sorted(scores.items()):
            rec: Record = {"account_id": account, "as_of": as_of,
                           "last_purchase": iso_ms(s.last_ts),
                           "frequency": s.frequency, "monetary": s.monetary,
                           "currency": self.currency, "recency_score": s.r,
                           "frequency_score": s.f, "monetary_score": s.m,
                           "rfm_segment": s.segment, "emitted_at": emitted_at}
            prev = self.latest.get(account)
            if prev is None or any(prev[k] != rec[k] for k in _STABLE):
                self.latest[account] = rec
                out.append((account, rec))
        for account in sorted(set(self.latest) - set(scores)):
            del self.latest[account]
            out.append((account, {"account_id": account, "as_of": as_of,
                                  "rfm_segment": None, "emitted_at": emitted_at}))
        return out
