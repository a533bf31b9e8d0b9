"""Synthetic B2B marketing traffic, calibrated on the reference figures (CONTRACT.md §2).

Campaigns send emails to contacts of several segments; visitors browse the site in
sessions; posts collect impressions and interactions; leads turn into deals that move
through the pipeline over days; spend is booked hourly. Deterministic for a given seed and
start time. Before the live span, an optional CRM/spend history (default 30 days) is
emitted in time order, as a CRM sync would, so pipeline KPIs have won deals to show.

Ground truth: ``Generator.stats`` counts every event by topic and type, and every injected
invalid, duplicate and late event, so tests can compare the engine's counters with it.
"""

from __future__ import annotations

import heapq
import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from metrics.events import FAMILY_TOPIC, TYPES
from metrics.records import iso_ms

DAY: Final = 86_400_000
HOUR: Final = 3_600_000
MIN: Final = 60_000

#: (campaign, channel): email campaigns first
CAMPAIGNS: Final = (
    ("spring-webinar", "email"),
    ("cfo-newsletter", "email"),
    ("product-launch", "email"),
    ("security-whitepaper", "paid_search"),
    ("linkedin-abm", "social"),
    ("partner-summit", "events"),
    ("analyst-report", "partner"),
)
EMAIL_CAMPAIGNS: Final = tuple(c for c, ch in CAMPAIGNS if ch == "email")
SEGMENTS: Final = ("it-director", "cfo", "marketing-manager", "procurement", "engineer")
CLIENTS: Final = (("mobile", 0.36), ("desktop", 0.33), ("webmail", 0.31))
WEB_CHANNELS: Final = (("organic", 0.35), ("paid_search", 0.25), ("email", 0.15),
                       ("social", 0.15), ("partner", 0.10))
LEAD_CHANNELS: Final = (("email", 0.30), ("paid_search", 0.25), ("social", 0.15),
                        ("events", 0.15), ("partner", 0.10), ("organic", 0.05))
PAGES: Final = ("/", "/pricing", "/product", "/blog/kpi-guide", "/customers", "/demo",
                "/whitepaper/b2b-roi", "/contact", "/about", "/integrations")
GOALS: Final = (("whitepaper", 0.6), ("quote_request", 0.25), ("demo", 0.15))
NETWORKS: Final = (("linkedin", 0.7), ("twitter", 0.2), ("viadeo", 0.1))
INCIDENTS: Final = ("open-rate-drop", "bounce-spike")

# Calibration (reference figures): 21.32 % opens per sent, 9.13 % not delivered, 3.42 %
# clickers per opener, 40.5 % single-page sessions, 75 % of carts abandoned, 6.4 won
# deals per 1,000 leads, engagement above 2 %.
P_BOUNCE: Final = 0.0913
P_OPEN_OF_SENT: Final = 0.2132
P_CLICK_OF_OPEN: Final = 0.0342
P_SINGLE_PAGE: Final = 0.405
P_ORDER_OF_CART: Final = 0.25
#: the B2B companies the traffic comes from; web sessions whose visitor is known as one's (%)
N_ACCOUNTS: Final = 2_000
P_KNOWN_SESSION: Final = 25
#: LinkedIn interactions whose member's company is named (%)
P_KNOWN_INTERACTION: Final = 15
#: stage -> (probability to advance, min days, max days); product of the first five and
#: the won share below is 0.2 * 0.4 * 0.4 * 0.5 * 0.4 = 0.0064
PIPELINE: Final = (("mql", 0.2, 1, 3), ("sql", 0.4, 1, 4), ("opportunity", 0.4, 2, 5),
                   ("proposal", 0.5, 2, 5))
P_WON_OF_PROPOSAL: Final = 0.4
LEADS_PER_DAY: Final = 120
SURVEYS_PER_DAY: Final = 24
SPEND_PER_LEAD: Final = 70.0
#: budget categories (seed 000: content 26 %, analytics 8 % of the marketing budget)
SPEND_CATEGORY_SHARES: Final = (("content", 0.26), ("analytics", 0.08), ("paid_media", 0.40),
                                ("events", 0.12), ("tools", 0.08), ("other", 0.06))

#: (reason it must get, how to make it) for injected invalid input
INVALID_KINDS: Final = (
    "not_json", "unknown_type", "missing_field:contact_id", "bad_value:bounce",
    "future_ts", "currency", "bad_value:ts", "not_object",
)


@dataclass
class GeneratorConfig:
    rate: float = 200.0  # live events per second of event time
    duration_s: float = 60.0
    seed: int = 1
    start_ms: int = 1_793_491_200_000  # 2026-11-01T00:00:00Z
    incident: str | None = None
    incident_at_s: float = 0.0
    incident_for_s: float | None = None  # None: until the end
    history_days: int = 30
    invalid: float = 0.0  # share of extra invalid messages
    duplicates: float = 0.0  # share of events sent twice
    late: float = 0.0  # share of extra events far beyond every window
    disorder_s: float = 0.0  # events are shuffled within this many seconds
    late_after_s: float = 300.0  # late events start once a family has run this long live


@dataclass
class Stats:
    events: dict[str, int] = field(default_factory=dict)  # "topic|type" -> valid count
    invalid: dict[str, int] = field(default_factory=dict)  # reason -> count
    duplicates: int = 0
    late: dict[str, int] = field(default_factory=dict)  # topic -> count

    def as_dict(self) -> dict[str, Any]:
        return {"events": dict(sorted(self.events.items())),
                "invalid": dict(sorted(self.invalid.items())),
                "duplicates": self.duplicates, "late": dict(sorted(self.late.items())),
                "total_valid": sum(self.events.values())}


Message = tuple[str, bytes]  # (topic, value)


class Generator:
    def __init__(self, cfg: GeneratorConfig):
        if cfg.incident is not None and cfg.incident not in INCIDENTS:
            raise ValueError(f"unknown incident {cfg.incident!r} (known: {', '.join(INCIDENTS)})")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        #: its own stream, so the budget categories leave every other draw as it was
        self._categories = random.Random(cfg.seed + 7919)
        self.stats = Stats()
        self._heap: list[tuple[int, int, dict[str, Any]]] = []
        self._seq = 0
        self._ids = 0
        self._leads = 0
        self._deals = 0
        self._mailed: dict[str, int] = {}
        self.end_ms = cfg.start_ms + int(cfg.duration_s * 1000)

    # ---- public ----------------------------------------------------------------------

    def messages(self) -> Iterator[tuple[int, Message]]:
        """(event time, (topic, value)) in event-time order (up to the configured disorder)."""
        stream = self._ordered()
        if self.cfg.disorder_s > 0:
            stream = self._disorder(stream)
        yield from self._inject(stream)

    # ---- scheduling ------------------------------------------------------------------

    def _at(self, ts: int, ev: dict[str, Any]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts, self._seq, ev))

    def _event(self, type_: str, ts: int, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        ev = {"event_id": f"g{self.cfg.seed}-{self._ids}", "type": type_}
        ev.update(fields)
        self._at(ts, ev)
        return ev

    def _ordered(self) -> Iterator[tuple[int, dict[str, Any]]]:
        cfg = self.cfg
        if cfg.history_days > 0:
            self._history(cfg.start_ms - cfg.history_days * DAY, cfg.start_ms)
        step_ms = 1000
        t = cfg.start_ms
        next_crm = cfg.start_ms
        while t < self.end_ms:
            n = self._poisson(cfg.rate * step_ms / 1000 / 2.4)
            for _ in range(n):
                self._activity(t + self.rng.randrange(step_ms))
            if t >= next_crm:
                self._crm_hour(next_crm, min(next_crm + HOUR, self.end_ms))
                next_crm += HOUR
            t += step_ms
            while self._heap and self._heap[0][0] < t:
                ts, _, ev = heapq.heappop(self._heap)
                yield ts, ev
        while self._heap and self._heap[0][0] < self.end_ms:
            ts, _, ev = heapq.heappop(self._heap)
            yield ts, ev

    def _disorder(self, stream: Iterator[tuple[int, dict[str, Any]]]
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Delay each event by a random amount up to disorder_s: bounded disorder."""
        span = int(self.cfg.disorder_s * 1000)
        buf: list[tuple[int, int, int, dict[str, Any]]] = []
        for ts, ev in stream:
            self._seq += 1
            heapq.heappush(buf, (ts + self.rng.randrange(span + 1), self._seq, ts, ev))
            while buf and buf[0][0] <= ts:
                _, _, t0, e0 = heapq.heappop(buf)
                yield t0, e0
        while buf:
            _, _, t0, e0 = heapq.heappop(buf)
            yield t0, e0

    def _inject(self, stream: Iterator[tuple[int, dict[str, Any]]]
                ) -> Iterator[tuple[int, Message]]:
        cfg, rng, st = self.cfg, self.rng, self.stats
        first_ts: dict[str, int] = {}
        for ts, ev in stream:
            ev["ts"] = iso_ms(ts)
            fam = TYPES[ev["type"]].family
            topic = FAMILY_TOPIC[fam]
            first_ts.setdefault(fam, ts)
            key = f"{topic}|{ev['type']}"
            st.events[key] = st.events.get(key, 0) + 1
            raw = orjson.dumps(ev)
            yield ts, (topic, raw)
            if cfg.duplicates and rng.random() < cfg.duplicates:
                st.duplicates += 1
                yield ts, (topic, raw)
            if cfg.invalid and rng.random() < cfg.invalid:
                yield ts, self._invalid(ts, ev, topic)
            # far beyond every window, and only once the family has long started, so it is
            # late whatever the watermark. Started counts from the live stream, not the
            # history: a producer sends the history in a burst, and a late event there can
            # share its arrival millisecond with the family's first events on other
            # partitions, where no order is known and the engine counts it (docs/semantics.md)
            if (cfg.late and rng.random() < cfg.late
                    and ts - max(first_ts[fam], cfg.start_ms) > cfg.late_after_s * 1000):
                self._ids += 1
                late = dict(ev, event_id=f"g{cfg.seed}-late-{self._ids}",
                            ts=iso_ms(first_ts[fam] - 40 * DAY))
                st.late[topic] = st.late.get(topic, 0) + 1
                yield ts, (topic, orjson.dumps(late))

    def _invalid(self, ts: int, ev: dict[str, Any], topic: str) -> Message:
        kind = self.rng.choice(INVALID_KINDS)
        self.stats.invalid[kind] = self.stats.invalid.get(kind, 0) + 1
        self._ids += 1
        eid = f"g{self.cfg.seed}-bad-{self._ids}"
        base = {"event_id": eid, "ts": iso_ms(ts), "campaign_id": "spring-webinar",
                "contact_id": "c-1"}
        topic_of = {"email": "email-events", "spend": "spend-events"}
        if kind == "not_json":
            return topic, b'{"event_id": "' + eid.encode() + b'", "type": '
        if kind == "not_object":
            return topic, b'["not", "an", "object"]'
        if kind == "unknown_type":
            return topic, orjson.dumps({**base, "type": "email.forwarded"})
        if kind == "missing_field:contact_id":
            bad = {**base, "type": "email.sent"}
            del bad["contact_id"]
            return topic_of["email"], orjson.dumps(bad)
        if kind == "bad_value:bounce":
            return topic_of["email"], orjson.dumps({**base, "type": "email.bounced",
                                                    "bounce": "medium"})
        if kind == "future_ts":
            return topic_of["email"], orjson.dumps({**base, "type": "email.sent",
                                                    "ts": iso_ms(ts + 400 * DAY)})
        if kind == "currency":
            return topic_of["spend"], orjson.dumps({"event_id": eid, "ts": iso_ms(ts),
                                                    "type": "spend.recorded", "amount": 10,
                                                    "channel": "email", "currency": "USD"})
        return topic_of["email"], orjson.dumps({**base, "type": "email.sent",
                                                "ts": "yesterday at noon"})

    # ---- activities ------------------------------------------------------------------

    def _incident(self, ts: int) -> str | None:
        cfg = self.cfg
        if cfg.incident is None:
            return None
        start = cfg.start_ms + int(cfg.incident_at_s * 1000)
        stop = self.end_ms if cfg.incident_for_s is None else \
            start + int(cfg.incident_for_s * 1000)
        return cfg.incident if start <= ts < stop else None

    def _activity(self, ts: int) -> None:
        r = self.rng.random()
        if r < 0.62:
            self._email(ts)
        elif r < 0.92:
            self._session(ts)
        else:
            self._social(ts)

    def _known(self, session_id: str) -> bool:
        """Whether a session's visitor is identified as an account's (a form, reverse IP)."""
        return zlib.crc32(session_id.encode()) % 100 < P_KNOWN_SESSION

    def _email(self, ts: int) -> None:
        rng = self.rng
        incident = self._incident(ts)
        camp = rng.choice(EMAIL_CAMPAIGNS)
        # a campaign mails each contact once, so unique opens per sent match the benchmark
        self._mailed[camp] = n = self._mailed.get(camp, 0) + 1
        contact = f"c-{n:06d}"
        seg = rng.choice(SEGMENTS)
        base = {"campaign_id": camp, "contact_id": contact, "segment": seg, "channel": "email",
                "account_id": _account_of(contact)}
        self._event("email.sent", ts, **base)
        p_bounce = 0.30 if incident == "bounce-spike" else P_BOUNCE
        t = ts + rng.randrange(500, 20_000)
        if rng.random() < p_bounce:
            self._event("email.bounced", t, bounce="hard" if rng.random() < 0.35 else "soft",
                        **base)
            return
        self._event("email.delivered", t, **base)
        p_open = 0.04 if incident == "open-rate-drop" else P_OPEN_OF_SENT
        if rng.random() < p_open / (1 - P_BOUNCE):
            t_open = t + min(int(rng.expovariate(1 / 40_000)), 20 * MIN)
            client = _pick(rng, CLIENTS)
            self._event("email.opened", t_open, client=client, **base)
            if rng.random() < 0.3:
                self._event("email.opened", t_open + rng.randrange(MIN, 30 * MIN),
                            client=client, **base)
            if rng.random() < P_CLICK_OF_OPEN:
                self._event("email.clicked", t_open + rng.randrange(2_000, 90_000),
                            url=f"https://example.com/{camp}", **base)
        if rng.random() < 0.002:
            self._event("email.unsubscribed", t + rng.randrange(MIN, 10 * MIN), **base)

    def _session(self, ts: int) -> None:
        rng = self.rng
        self._ids += 1
        sid = f"s-{self.cfg.seed}-{self._ids}"
        channel = _pick(rng, WEB_CHANNELS)
        camp = {"email": "spring-webinar", "paid_search": "security-whitepaper",
                "social": "linkedin-abm", "partner": "analyst-report"}.get(channel)
        extra = {"campaign_id": camp} if camp else {}
        if self._known(sid):
            extra["account_id"] = _account_of(sid)
        n_pages = 1 if rng.random() < P_SINGLE_PAGE else 2 + min(int(rng.expovariate(0.5)), 8)
        t = ts
        for i in range(n_pages):
            gap = rng.randrange(10_000, 240_000)
            last = i == n_pages - 1
            dur = round(rng.uniform(5, 120), 1) if last else round(gap / 1000, 1)
            self._event("page.viewed", t, session_id=sid, visitor_id=f"v-{sid}",
                        page=rng.choice(PAGES), duration_s=dur, channel=channel, **extra)
            if not last:
                t += gap
        if n_pages > 1 and rng.random() < 0.08:
            self._event("goal.converted", t + 1_000, session_id=sid, goal=_pick(rng, GOALS),
                        channel=channel, **extra)
        if n_pages > 1 and rng.random() < 0.05:
            cart = f"cart-{sid}"
            # an order is invoiced to an account: the session's when it is known
            account = extra.get("account_id") or _account_of(cart)
            self._event("cart.created", t + 2_000, cart_id=cart, session_id=sid,
                        account_id=account)
            if rng.random() < P_ORDER_OF_CART:
                self._event("order.placed", t + rng.randrange(30_000, 300_000), cart_id=cart,
                            amount=round(rng.uniform(200, 5_000), 2), account_id=account)

    def _social(self, ts: int) -> None:
        rng = self.rng
        network = _pick(rng, NETWORKS)
        count = rng.randrange(50, 500)
        camp = "linkedin-abm" if network == "linkedin" else None
        extra = {"campaign_id": camp} if camp else {}
        self._event("social.impressions", ts, network=network, count=count, **extra)
        interactions = sum(1 for _ in range(count) if rng.random() < 0.026)
        while interactions > 0:
            n = min(interactions, rng.randrange(1, 4))
            interactions -= n
            t = ts + rng.randrange(1_000, 120_000)
            # LinkedIn names the member's company for some interactions: an account touch
            key = f"{network}-{t}-{n}"
            who = {"account_id": _account_of(key)} if camp and \
                zlib.crc32(key.encode()) % 100 < P_KNOWN_INTERACTION else {}
            self._event("social.interaction", t, network=network,
                        kind=rng.choice(("like", "comment", "share", "click", "follow")),
                        count=n, **extra, **who)

    # ---- CRM and spend ---------------------------------------------------------------

    def _history(self, start: int, stop: int) -> None:
        """History before the live span: hourly leads, deals, surveys and spend."""
        t = start
        while t < stop:
            self._crm_hour(t, t + HOUR)
            t += HOUR

    def _crm_hour(self, start: int, stop: int) -> None:
        rng = self.rng
        span = stop - start
        if span <= 0:
            return
        scale = span / HOUR
        for _ in range(self._poisson(LEADS_PER_DAY / 24 * scale)):
            self._lead(start + rng.randrange(span))
        for _ in range(self._poisson(SURVEYS_PER_DAY / 24 * scale)):
            r = rng.random()
            score = rng.choice((9, 10)) if r < 0.45 else rng.choice((7, 8)) if r < 0.75 \
                else rng.randrange(0, 7)
            self._event("survey.answered", start + rng.randrange(span), score=score,
                        account_id=f"acct-{rng.randrange(N_ACCOUNTS)}")
        per_hour = LEADS_PER_DAY / 24 * SPEND_PER_LEAD * scale
        for camp, channel in CAMPAIGNS:
            share = dict(LEAD_CHANNELS).get(channel, 0.05)
            n_camps = sum(1 for _, ch in CAMPAIGNS if ch == channel)
            amount = round(per_hour * share / n_camps * rng.uniform(0.8, 1.2), 2)
            self._event("spend.recorded", start + rng.randrange(span), amount=amount,
                        channel=channel, campaign_id=camp, currency="EUR",
                        category=_pick(self._categories, SPEND_CATEGORY_SHARES))

    def _lead(self, ts: int) -> None:
        rng = self.rng
        self._leads += 1
        lead_id = f"lead-{self.cfg.seed}-{self._leads}"
        channel = _pick(rng, LEAD_CHANNELS)
        camps = [c for c, ch in CAMPAIGNS if ch == channel]
        extra = {"campaign_id": rng.choice(camps)} if camps else {}
        account = f"acct-{rng.randrange(N_ACCOUNTS)}"
        self._event("lead.created", ts, lead_id=lead_id, channel=channel, account_id=account,
                    **extra)
        self._deals += 1
        deal_id = f"deal-{self.cfg.seed}-{self._deals}"
        t = ts + rng.randrange(MIN, HOUR)
        self._event("deal.stage_changed", t, deal_id=deal_id, stage="lead", lead_id=lead_id,
                    account_id=account)
        for stage, p, lo, hi in PIPELINE:
            if rng.random() >= p:
                if stage != "mql":
                    self._event("deal.stage_changed", t + rng.randrange(lo * DAY, hi * DAY),
                                deal_id=deal_id, stage="lost", lead_id=lead_id,
                                account_id=account)
                return
            t += rng.randrange(lo * DAY, hi * DAY)
            self._event("deal.stage_changed", t, deal_id=deal_id, stage=stage,
                        lead_id=lead_id, account_id=account)
        t += rng.randrange(2 * DAY, 6 * DAY)
        if rng.random() < P_WON_OF_PROPOSAL:
            amount = round(rng.lognormvariate(10.4, 0.5), -1)
            self._event("deal.stage_changed", t, deal_id=deal_id, stage="won", amount=amount,
                        lead_id=lead_id, account_id=account)
        else:
            self._event("deal.stage_changed", t, deal_id=deal_id, stage="lost",
                        lead_id=lead_id, account_id=account)

    def _poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        if lam > 50:  # normal approximation: fast and good enough for traffic volume
            return max(0, round(self.rng.gauss(lam, math.sqrt(lam))))
        k, p, limit = 0, 1.0, math.exp(-lam)
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1


def _account_of(key: str) -> str:
    """The account a contact, session or cart belongs to, fixed by its id: each of its
    events names the same account, and no random draw changes the rest of the traffic."""
    return f"acct-{zlib.crc32(key.encode()) % N_ACCOUNTS}"


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    acc = 0.0
    for value, w in weighted:
        acc += w
        if r < acc:
            return value
    return weighted[-1][0]
