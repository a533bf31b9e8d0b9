"""KPI records (CONTRACT.md §3) and their topic keys."""

from __future__ import annotations

from metrics.records import iso_ms, make_record, update_key, window_key
from tests.helpers import DEFAULT_CATALOG

KPI = DEFAULT_CATALOG.kpis["email_open_rate"]


def test_a_record_has_the_contract_fields_and_null_when_nothing_was_sent() -> None:
    rec = make_record(KPI, "ratio", "1h", "2026-11-22T07:00:00Z", "2026-11-22T08:00:00Z",
                      {"campaign_id": "c"}, 2132.0, 10000.0, True, 0, iso_ms(1))
    assert rec["value"] == 0.2132 and rec["numerator"] == 2132 and type(rec["numerator"]) is int
    assert rec["emitted_at"] == "1970-01-01T00:00:00.001Z"
    empty = make_record(KPI, "ratio", "1h", "a", "b", {}, 0.0, 0.0, True, 0, "t")
    assert empty["value"] is None
    huge = make_record(KPI, "ratio", "1h", "a", "b", {}, 2.0**60, 1.0, True, 0, "t")
    assert type(huge["numerator"]) is float  # past 2**53 a float stays a float


def test_keys_sort_dims() -> None:
    rec = {"kpi": "k", "window": "5m", "dims": {"segment": "s", "campaign_id": "c"},
           "end": "E"}
    assert window_key(rec) == "k|5m|campaign_id=c;segment=s|E"
    assert update_key(rec) == "k|5m|campaign_id=c;segment=s"
