"""The event contract (CONTRACT.md §1): every type accepted, every reason code produced."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics.events import TYPES, Event, Invalid, parse_event, reason_codes

NOW = 1_793_491_200_000  # 2026-11-01T00:00:00Z
TS = "2026-10-31T23:59:00Z"

VALID: dict[str, dict[str, Any]] = {
    "email.sent": {"campaign_id": "c1", "contact_id": "p1", "segment": "cfo"},
    "email.delivered": {"campaign_id": "c1", "contact_id": "p1"},
    "email.opened": {"campaign_id": "c1", "contact_id": "p1", "client": "mobile"},
    "email.clicked": {"campaign_id": "c1", "contact_id": "p1", "url": "https://x.test/a"},
    "email.bounced": {"campaign_id": "c1", "contact_id": "p1", "bounce": "hard"},
    "email.unsubscribed": {"campaign_id": "c1", "contact_id": "p1"},
    "page.viewed": {"session_id": "s1", "page": "/pricing", "duration_s": 12.5,
                    "visitor_id": "v1", "channel": "organic"},
    "goal.converted": {"session_id": "s1", "goal": "demo"},
    "cart.created": {"cart_id": "k1", "session_id": "s1"},
    "order.placed": {"cart_id": "k1", "amount": 0},
    "lead.created": {"lead_id": "l1", "channel": "events", "campaign_id": "c2"},
    "deal.stage_changed": {"deal_id": "d1", "stage": "won", "amount": 1200.5, "lead_id": "l1"},
    "survey.answered": {"score": 10, "account_id": "a1"},
    "social.impressions": {"network": "linkedin", "count": 100},
    "social.interaction": {"network": "linkedin", "kind": "share"},
    "spend.recorded": {"amount": 99.9, "channel": "paid_search", "currency": "EUR"},
}


def raw(type_: str, **over: Any) -> bytes:
    ev: dict[str, Any] = {"event_id": "e1", "type": type_, "ts": TS, **VALID[type_]}
    for k, v in over.items():
        if v is _DROP:
            ev.pop(k, None)
        else:
            ev[k] = v
    return orjson.dumps(ev)


_DROP = object()


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]} if depth % 2 else [value]
    return value


def parse(data: bytes, **kw: Any) -> Event | Invalid:
    return parse_event(data, now_ms=NOW, **kw)


def test_every_type_has_a_valid_example() -> None:
    assert set(VALID) == set(TYPES)


@pytest.mark.parametrize("type_", sorted(VALID))
def test_valid_event_of_every_type_is_accepted(type_: str) -> None:
    ev = parse(raw(type_), topic_family=TYPES[type_].family)
    assert isinstance(ev, Event), ev
    assert ev.type == type_ and ev.event_id == "e1"
    assert ev.ts_ms == NOW - 60_000
    assert ev.family == TYPES[type_].family
    assert ev.get("channel") is not None  # defaulted from the family when absent


def test_defaults_are_filled() -> None:
    ev = parse(raw("email.opened", client="smartwatch"))
    assert isinstance(ev, Event) and ev.get("client") == "unknown"
    ev = parse(raw("email.opened", client=_DROP))
    assert isinstance(ev, Event) and ev.get("client") == "unknown"
    ev = parse(raw("social.interaction"))
    assert isinstance(ev, Event) and ev.get("count") == 1
    ev = parse(raw("email.sent"))
    assert isinstance(ev, Event) and ev.get("channel") == "email"


def test_epoch_ms_and_offsets_are_event_time() -> None:
    ev = parse(raw("email.sent", ts=NOW - 1))
    assert isinstance(ev, Event) and ev.ts_ms == NOW - 1
    ev = parse(raw("email.sent", ts="2026-11-01T01:00:00+01:00"))
    assert isinstance(ev, Event) and ev.ts_ms == NOW


def test_unknown_fields_are_ignored() -> None:
    assert isinstance(parse(raw("email.sent", utm_source="x", nested={"a": 1})), Event)


REJECTIONS: list[tuple[str, bytes | str, str]] = [
    ("not json", b"{nope", "not_json"),
    ("not utf-8", b'{"event_id": "\xff"}', "not_json"),
    ("array", b"[1, 2]", "not_object"),
    ("too large", b'{"a": "' + b"x" * (1024 * 1024) + b'"}', "too_large"),
    ("unknown type", raw("email.sent", type="email.forwarded"), "unknown_type"),
    ("type not a string", raw("email.sent", type=7), "unknown_type"),
    ("no type", raw("email.sent", type=_DROP), "missing_field:type"),
    ("no event_id", raw("email.sent", event_id=_DROP), "missing_field:event_id"),
    ("empty event_id", raw("email.sent", event_id=""), "bad_value:event_id"),
    ("long event_id", raw("email.sent", event_id="x" * 129), "bad_value:event_id"),
    ("no ts", raw("email.sent", ts=_DROP), "missing_field:ts"),
    ("naive ts", raw("email.sent", ts="2026-10-31T23:59:00"), "bad_value:ts"),
    ("garbage ts", raw("email.sent", ts="yesterday"), "bad_value:ts"),
    ("negative ts", raw("email.sent", ts=-5), "bad_value:ts"),
    ("bool ts", raw("email.sent", ts=True), "bad_value:ts"),
    ("future ts", raw("email.sent", ts=NOW + 5 * 60_000 + 1), "future_ts"),
    ("epoch zero", raw("email.sent", ts=0), "ancient_ts"),
    ("before 2000", raw("email.sent", ts="1999-12-31T23:59:59.999Z"), "ancient_ts"),
    ("year one", raw("email.sent", ts="0001-01-01T00:00:00Z"), "ancient_ts"),
    ("nested 1k deep", b'{"a":' * 1000 + b"1" + b"}" * 1000, "too_deep"),
    ("nested 100k deep", b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    ("deep inside an event", raw("email.sent", x=_nest(40)), "too_deep"),
    ("missing campaign", raw("email.sent", campaign_id=_DROP), "missing_field:campaign_id"),
    ("missing contact", raw("email.opened", contact_id=_DROP), "missing_field:contact_id"),
    ("campaign too long", raw("email.sent", campaign_id="c" * 129), "bad_value:campaign_id"),
    ("channel too long", raw("email.sent", channel="c" * 65), "bad_value:channel"),
    ("segment not str", raw("email.sent", segment=3), "bad_value:segment"),
    ("account not str", raw("survey.answered", account_id=[]), "bad_value:account_id"),
    ("bounce kind", raw("email.bounced", bounce="medium"), "bad_value:bounce"),
    ("no bounce kind", raw("email.bounced", bounce=_DROP), "missing_field:bounce"),
    ("no session", raw("page.viewed", session_id=_DROP), "missing_field:session_id"),
    ("no page", raw("page.viewed", page=_DROP), "missing_field:page"),
    ("negative duration", raw("page.viewed", duration_s=-1), "bad_value:duration_s"),
    ("no goal", raw("goal.converted", goal=_DROP), "missing_field:goal"),
    ("no cart", raw("cart.created", cart_id=_DROP), "missing_field:cart_id"),
    ("negative order", raw("order.placed", amount=-1), "bad_value:amount"),
    ("order amount text", raw("order.placed", amount="12"), "bad_value:amount"),
    ("nan amount", b'{"event_id":"e","type":"order.placed","ts":1,"cart_id":"k",'
                   b'"amount":NaN}', "not_json"),
    ("no lead id", raw("lead.created", lead_id=_DROP), "missing_field:lead_id"),
    ("lead without channel", raw("lead.created", channel=_DROP), "missing_field:channel"),
    ("bad stage", raw("deal.stage_changed", stage="closed"), "bad_value:stage"),
    ("won without amount", raw("deal.stage_changed", amount=_DROP), "missing_field:amount"),
    ("no deal id", raw("deal.stage_changed", deal_id=_DROP), "missing_field:deal_id"),
    ("score too high", raw("survey.answered", score=11), "bad_value:score"),
    ("score float", raw("survey.answered", score=9.5), "bad_value:score"),
    ("score missing", raw("survey.answered", score=_DROP), "missing_field:score"),
    ("zero impressions", raw("social.impressions", count=0), "bad_value:count"),
    ("no network", raw("social.impressions", network=_DROP), "missing_field:network"),
    ("bad kind", raw("social.interaction", kind="poke"), "bad_value:kind"),
    ("zero spend", raw("spend.recorded", amount=0), "bad_value:amount"),
    ("spend nowhere", raw("spend.recorded", channel=_DROP),
     "missing_field:campaign_id_or_channel"),
    ("spend in USD", raw("spend.recorded", currency="USD"), "currency"),
]


@pytest.mark.parametrize(("case", "data", "reason"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections_carry_a_stable_reason(case: str, data: bytes, reason: str) -> None:
    result = parse(data if isinstance(data, bytes) else data.encode())
    assert result == Invalid(reason)
    assert reason in reason_codes()


def test_wrong_topic_is_rejected() -> None:
    assert parse(raw("email.sent"), topic_family="web") == Invalid("wrong_topic")


def test_reporting_currency_is_configurable() -> None:
    assert isinstance(parse(raw("spend.recorded", currency="USD"), currency="USD"), Event)
    assert parse(raw("spend.recorded"), currency="USD") == Invalid("currency")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = parse(data)
    assert isinstance(result, Event | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in reason_codes()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.dictionaries(
    st.sampled_from(["event_id", "ts", "campaign_id", "contact_id", "channel", "segment",
                     "amount", "score", "count", "stage", "bounce", "session_id", "client"]),
    json_values, max_size=4))
def test_mutated_events_parse_or_get_a_known_reason(type_: str, mutation: dict[str, Any]
                                                    ) -> None:
    ev: dict[str, Any] = {"event_id": "e1", "type": type_, "ts": TS, **VALID[type_], **mutation}
    result = parse(json.dumps(ev).encode())
    assert isinstance(result, Event | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in reason_codes()


# ---- the fast path (msgspec decoder) accepts exactly what validate() accepts ------------

def _same(data: bytes, **kw: Any) -> None:
    """parse_event against the slow path alone: same verdict, same event."""
    from metrics.events import _parse_slow

    fast = parse(data, **kw)
    slow = _parse_slow(data, NOW, kw.get("currency", "EUR"), kw.get("topic_family"))
    assert type(fast) is type(slow)
    if isinstance(fast, Invalid):
        assert fast == slow
    else:
        assert isinstance(slow, Event)
        assert (fast.event_id, fast.type, fast.ts_ms, fast.family, fast.data) == (
            slow.event_id, slow.type, slow.ts_ms, slow.family, slow.data)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.dictionaries(
    st.sampled_from(sorted({"event_id", "ts", "type", "client", "url", "visitor_id",
                            "duration_s", "goal", "cart_id", "lead_id", "deal_id", "page",
                            "network", "kind", "currency", "account_id"}
                           | {"campaign_id", "contact_id", "channel", "segment", "amount",
                              "score", "count", "stage", "bounce", "session_id"})),
    json_values | st.sampled_from([
        "", "x" * 64, "x" * 65, "é" * 128, "é" * 129, "😀" * 64, "😀" * 65, True, False, 0,
        -0.0, 1.0, 2.0, 10, 11, -1, 2**63, 2**64, 1e308, "won", "lost", "hard", "share",
        "mobile", "EUR", "USD", 1_793_491_100_000, "2026-10-31T23:59:00+01:00"]),
    max_size=4))
def test_fast_path_agrees_with_validate(type_: str, mutation: dict[str, Any]) -> None:
    ev: dict[str, Any] = {"event_id": "e1", "type": type_, "ts": TS, **VALID[type_], **mutation}
    data = json.dumps(ev).encode()
    _same(data)
    _same(data, topic_family="email")


@pytest.mark.parametrize("data", [
    # duplicate keys: orjson keeps the last value, so the decoder must check every one
    b'{"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1","campaign_id":5}',
    b'{"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":5,"contact_id":"p1","campaign_id":"c1"}',
    b'{"event_id":"e1","type":"web.nope","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1"}',
    b'{"event_id":"e1","type":"email.sent","type":"page.viewed","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1"}',
    # integers beyond 64 bits, escapes, surrogates, whitespace around the object
    b'{"event_id":"e1","type":"social.impressions","ts":"2026-10-31T23:59:00Z",'
    b'"network":"x","count":18446744073709551616}',
    b'{"event_id":"\\ud800","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1"}',
    b'{"event_id":"\\ud83d\\ude00","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1"}',
    b' {"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1"}\r\n',
    b'\xef\xbb\xbf{"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1"}',
    b'{"event_id":"e1","type":"email.sent","ts":1793491100000.0,'
    b'"campaign_id":"c1","contact_id":"p1"}',
    b'{"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1","amount":1e999}',
    b'[{"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1"}]',
    # unknown fields: msgspec would skip values orjson refuses
    b'{"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1","x":' + b"[" * 1100 + b"]" * 1100 + b"}",
    b'{"event_id":"e1","type":"email.sent","ts":"2026-10-31T23:59:00Z",'
    b'"campaign_id":"c1","contact_id":"p1","x":18446744073709551616}',
    b'{"event_id":"e1","type":"spend.recorded","ts":"2026-10-31T23:59:00Z",'
    b'"channel":"x","amount":18446744073709551616}',
    b'{"event_id":"e1","type":"spend.recorded","ts":"2026-10-31T23:59:00Z",'
    b'"channel":"x","amount":9223372036854775807}',
])
def test_fast_path_agrees_on_edge_cases(data: bytes) -> None:
    _same(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fast_path_agrees_on_arbitrary_bytes(data: bytes) -> None:
    _same(data)


def test_valid_events_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import metrics.events

    def slow(*args: Any) -> Any:
        raise AssertionError("slow path")

    monkeypatch.setattr(metrics.events, "_parse_slow", slow)
    for type_ in VALID:
        assert isinstance(parse(raw(type_)), Event)
    with pytest.raises(AssertionError, match="slow path"):
        parse(raw("email.sent", campaign_id=_DROP))
