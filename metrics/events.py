"""The event contract (CONTRACT.md §1) as code: raw bytes in, a typed event or a reason out.

Pure and allocation-light: this runs once per input message on the hot path. Rejections are
values (``Invalid``), never exceptions, so a poison pill can't take a worker down.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Final, Literal, NamedTuple, Union

import msgspec
import orjson

from metrics import codegen
from metrics.constants import UNKNOWN
from metrics.timestamps import MILLIS, SECOND_MS, parse_ts, parse_utc_fast

MAX_EVENT_BYTES: Final = 1024 * 1024
FUTURE_TOLERANCE_MS: Final = 5 * 60 * 1000
#: containers nested deeper than this anywhere in a message: ``too_deep`` (events are flat
#: objects; the fast path accepts only those, so both paths agree)
MAX_DEPTH: Final = 32
#: the earliest event time accepted, 2000-01-01T00:00:00Z: older is a typo (``"ts": 0``), and
#: would make the engine open windows decades before the rest of the traffic
OLDEST_TS_MS: Final = 946_684_800_000

#: topic (without prefix) -> topic family
TOPIC_FAMILIES: Final[dict[str, str]] = {
    "email-events": "email",
    "web-events": "web",
    "crm-events": "crm",
    "social-events": "social",
    "spend-events": "spend",
}
FAMILIES: Final = ("email", "web", "crm", "social", "spend")
FAMILY_TOPIC: Final = {fam: topic for topic, fam in TOPIC_FAMILIES.items()}
#: the accounts stage (metrics/feed.py): copies of other families' events; optional
ACCOUNTS: Final = "accounts"
#: `channel` when an event carries none
DEFAULT_CHANNEL: Final = {"email": "email", "web": "web", "social": "social", "crm": "unknown",
                          "spend": "unknown", ACCOUNTS: "unknown"}
DEAL_STAGES: Final = ("lead", "mql", "sql", "opportunity", "proposal", "won", "lost")

_BAD: Final = object()


class Event(msgspec.Struct, gc=False):
    """A validated event. ``data`` is its type's struct (``event_fields``): the contract's
    fields as attributes (None when absent), defaults filled in; unknown fields dropped.

    A struct, made once per message: built in C, and untracked by the cycle collector
    (it only ever holds strings, numbers and its data struct)."""

    event_id: str
    type: str
    ts_ms: int
    family: str
    data: Any

    def get(self, field: str, default: Any = None) -> Any:
        return getattr(self.data, field, default)

    def __repr__(self) -> str:
        return f"Event({self.type} {self.event_id} @{self.ts_ms})"


class Invalid(NamedTuple):
    """A rejected input with its stable reason code (e.g. ``missing_field:campaign_id``)."""

    reason: str


class OneOf:
    """One of the given strings."""

    def __init__(self, *values: str):
        self.values = values
        self._allowed = frozenset(values)

    def __call__(self, v: Any) -> Any:
        return v if type(v) is str and v in self._allowed else _BAD

    def schema(self) -> Any:
        return Literal[self.values]


_I64_MAX, _I64_MIN = 2**63 - 1, -(2**63)


class IntRange:
    """An integer (never a bool or a float) in [lo, hi]."""

    def __init__(self, lo: int, hi: int | None = None):
        self.lo, self.hi = lo, hi

    def __call__(self, v: Any) -> Any:
        if type(v) is not int or v < self.lo or (self.hi is not None and v > self.hi):
            return _BAD
        return v

    def schema(self) -> Any:
        # orjson reads integers past 64 bits as floats, which this check rejects; msgspec
        # bounds stop at int64, and larger ones go the slow way (still exact)
        hi = _I64_MAX if self.hi is None else min(self.hi, _I64_MAX)
        return Annotated[int, msgspec.Meta(ge=max(self.lo, _I64_MIN), le=hi)]


class Number:
    """A finite int or float, positive (or zero unless strictly_positive)."""

    def __init__(self, *, strictly_positive: bool):
        self.strictly_positive = strictly_positive

    def __call__(self, v: Any) -> Any:
        t = type(v)
        if (t is int or (t is float and math.isfinite(v))) and (
                v > 0 or (v == 0 and not self.strictly_positive)):
            return v
        return _BAD

    def schema(self) -> Any:
        # integers past int64: orjson reads them as floats, so they go the slow way
        if self.strictly_positive:
            ints, floats = msgspec.Meta(gt=0, le=_I64_MAX), msgspec.Meta(gt=0)
        else:
            ints, floats = msgspec.Meta(ge=0, le=_I64_MAX), msgspec.Meta(ge=0)
        return Union[Annotated[int, ints], Annotated[float, floats]]  # noqa: UP007


#: how a field is checked: an int is a string of at most that many characters
Validator = OneOf | IntRange | Number | int


_S128, _S64 = 128, 64  # plain strings are checked inline by length
_AMOUNT_GE0 = Number(strictly_positive=False)
_COUNT = IntRange(1)

#: optional envelope fields, checked whenever present: (name, max length)
ENVELOPE_LEN: Final[tuple[tuple[str, int], ...]] = (
    ("campaign_id", _S128),
    ("channel", _S64),
    ("account_id", _S128),
    ("contact_id", _S128),
    ("segment", _S64),
)


class TypeSpec(NamedTuple):
    family: str
    required: tuple[tuple[str, Validator], ...]
    optional: tuple[tuple[str, Validator], ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()


_EMAIL_REQ = (("campaign_id", _S128), ("contact_id", _S128))

#: a spend's budget category (seed 000: content 26 %, analytics 8 % of the budget)
SPEND_CATEGORIES: Final = ("content", "analytics", "paid_media", "events", "tools", "other")

TYPES: Final[dict[str, TypeSpec]] = {
    "email.sent": TypeSpec("email", _EMAIL_REQ),
    "email.delivered": TypeSpec("email", _EMAIL_REQ),
    "email.opened": TypeSpec(
        "email", _EMAIL_REQ, (("client", _S64),), (("client", UNKNOWN),)
    ),
    "email.clicked": TypeSpec("email", _EMAIL_REQ, (("url", 4096),)),
    "email.bounced": TypeSpec("email", (*_EMAIL_REQ, ("bounce", OneOf("hard", "soft")))),
    "email.unsubscribed": TypeSpec("email", _EMAIL_REQ),
    "page.viewed": TypeSpec(
        "web",
        (("session_id", _S128), ("page", 2048)),
        (("visitor_id", _S128), ("duration_s", _AMOUNT_GE0)),
    ),
    "goal.converted": TypeSpec("web", (("session_id", _S128), ("goal", _S64))),
    "cart.created": TypeSpec("web", (("cart_id", _S128),), (("session_id", _S128),)),
    "order.placed": TypeSpec("web", (("cart_id", _S128), ("amount", _AMOUNT_GE0))),
    "lead.created": TypeSpec("crm", (("lead_id", _S128), ("channel", _S64))),
    "deal.stage_changed": TypeSpec(
        "crm",
        (("deal_id", _S128), ("stage", OneOf(*DEAL_STAGES))),
        (("amount", _AMOUNT_GE0), ("lead_id", _S128)),
    ),
    "survey.answered": TypeSpec("crm", (("score", IntRange(0, 10)),)),
    "social.impressions": TypeSpec("social", (("network", _S64), ("count", _COUNT))),
    "social.interaction": TypeSpec(
        "social",
        (("network", _S64), ("kind", OneOf("like", "comment", "share", "click", "follow"))),
        (("count", _COUNT),),
        (("count", 1),),
    ),
    "spend.recorded": TypeSpec(
        "spend", (("amount", Number(strictly_positive=True)),),
        (("currency", _S64), ("category", OneOf(*SPEND_CATEGORIES))),
    ),
}

#: input type -> the accounts stage's copy (metrics/feed.py): its fields, in the accounts
#: family. Derived only: no topic and no replay input takes these types.
ACCOUNT_FEEDS: Final[dict[str, str]] = {
    "order.placed": "account.order", "deal.stage_changed": "account.deal",
    "spend.recorded": "account.spend", "email.opened": "account.email_open",
    "email.clicked": "account.email_click", "page.viewed": "account.page_view",
    "goal.converted": "account.goal", "social.interaction": "account.social",
    "lead.created": "account.lead"}
#: copies that are touches (attribution: with account and campaign) -> a default channel
TOUCH_CHANNEL: Final[dict[str, str]] = {
    "account.email_click": "email", "account.page_view": "web", "account.goal": "web",
    "account.social": "social", "account.lead": "unknown"}
PROGRESS_MARK: Final = "account.progress"  # a feeding partition's time (engine.progress)
#: every type the engine knows: the input types, the accounts stage's copies and marks
EVENT_TYPES: Final[dict[str, TypeSpec]] = {
    **TYPES, **{c: TypeSpec(ACCOUNTS, *TYPES[t][1:]) for t, c in ACCOUNT_FEEDS.items()},
    PROGRESS_MARK: TypeSpec(ACCOUNTS, ())}

_CLIENTS: Final = frozenset({"mobile", "desktop", "webmail"})

#: reason codes any message can get (besides those naming a type's own field:
#: ``missing_field:<f>``, ``bad_value:<f>``): what /metrics shows from the start, at 0
INVALID_REASONS: Final = (
    "not_json", "not_object", "too_large", "too_deep", "unknown_type", "wrong_topic",
    "missing_field:event_id", "missing_field:type", "missing_field:ts", "bad_value:event_id",
    "bad_value:ts", "future_ts", "ancient_ts", "currency",
    "missing_field:campaign_id_or_channel")


def validate(
    d: Any, *, now_ms: int, currency: str = "EUR", topic_family: str | None = None
) -> Event | Invalid:
    """Validate an already-decoded JSON value against the contract."""
    if type(d) is not dict:
        return Invalid("not_object")
    type_ = d.get("type")
    if type_ is None:
        return Invalid("missing_field:type")
    compiled = _COMPILED.get(type_) if type(type_) is str else None
    if compiled is None:
        return Invalid("unknown_type")
    if topic_family is not None and compiled[0] != topic_family:
        return Invalid("wrong_topic")
    event_id = d.get("event_id")
    if event_id is None:
        return Invalid("missing_field:event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= 128:
        return Invalid("bad_value:event_id")
    raw_ts = d.get("ts")
    if raw_ts is None:
        return Invalid("missing_field:ts")
    ts_ms = parse_utc_fast(raw_ts) if type(raw_ts) is str else None
    if ts_ms is None:
        ts_ms = parse_ts(raw_ts)
        if ts_ms is None:
            return Invalid("bad_value:ts")
    if ts_ms > now_ms + FUTURE_TOLERANCE_MS:
        return Invalid("future_ts")
    if ts_ms < OLDEST_TS_MS:
        return Invalid("ancient_ts")
    return compiled[1](d, event_id, ts_ms, currency)


def _compile(type_: str, spec: TypeSpec, struct: type[msgspec.Struct], finish: _Finish
             ) -> Callable[[dict[str, Any], str, int, str], Event | Invalid]:
    """Straight-line checks of one event type on a decoded dict (codegen.check_function;
    its interpreted twin is ``check_fields``). Generated once at import: per event this is
    ~2x faster than looping over a field table."""
    return codegen.check_function(type_, _fields(spec), {
        "Invalid": Invalid, "_BAD": _BAD, "S": struct, "FINISH": finish})


_Finish = Callable[[Any, str, int, str], "Event | Invalid"]


def _finish(type_: str, spec: TypeSpec) -> _Finish:
    """Defaults, cross-field rules, the family's channel (codegen.finish_function; its
    interpreted twin is ``finish_fields``)."""
    return codegen.finish_function(type_, spec.family, spec.defaults, _EXTRA_CHECKS.get(type_),
                                   DEFAULT_CHANNEL[spec.family],
                                   {"Event": Event, "Invalid": Invalid})


def check_fields(type_: str, d: dict[str, Any], event_id: str, ts_ms: int, currency: str
                 ) -> Event | Invalid:
    """The interpreted twin of the generated check of ``type_``: the same rules, read from
    the type's field table."""
    spec = EVENT_TYPES[type_]
    fields = _fields(spec)
    for name, check, required in fields:
        v = d.get(name)
        if v is None:
            if required:
                return Invalid(f"missing_field:{name}")
            continue
        if isinstance(check, int):
            if type(v) is not str or not 0 < len(v) <= check:
                return Invalid(f"bad_value:{name}")
        elif check(v) is _BAD:
            return Invalid(f"bad_value:{name}")
    s = _STRUCTS[type_](event_id=event_id, ts=d["ts"],
                        **{name: d.get(name) for name, _, _ in fields})
    return finish_fields(type_, s, event_id, ts_ms, currency)


def finish_fields(type_: str, s: Any, event_id: str, ts_ms: int, currency: str
                  ) -> Event | Invalid:
    """The interpreted twin of the generated finish of ``type_``."""
    spec = EVENT_TYPES[type_]
    for name, default in spec.defaults:
        if getattr(s, name) is None:
            setattr(s, name, default)
    extra = _EXTRA_CHECKS.get(type_)
    if extra is not None:
        r = extra(s, currency)
        if r is not None:
            return Invalid(r)
    if s.channel is None:
        s.channel = DEFAULT_CHANNEL[spec.family]
    return Event(event_id, type_, ts_ms, spec.family, s)


def _fields(spec: TypeSpec) -> list[tuple[str, Validator, bool]]:
    """(name, check, required) of every field a type checks: its required fields, the
    envelope fields it does not require, its optional fields."""
    required = {name for name, _ in spec.required}
    out = [(name, check, True) for name, check in spec.required]
    out += [(name, n, False) for name, n in ENVELOPE_LEN if name not in required]
    out += [(name, check, False) for name, check in spec.optional]
    return out


def _check_opened(s: Any, currency: str) -> str | None:
    if s.client not in _CLIENTS:
        s.client = UNKNOWN  # the contract folds unknown clients, it doesn't reject them
    return None


def _check_deal(s: Any, currency: str) -> str | None:
    if s.stage == "won" and s.amount is None:
        return "missing_field:amount"
    return None


def _check_spend(s: Any, currency: str) -> str | None:
    if s.campaign_id is None and s.channel is None:
        return "missing_field:campaign_id_or_channel"
    if s.currency is not None and s.currency != currency:
        return "currency"
    return None


_EXTRA_CHECKS: Final[dict[str, Callable[[Any, str], str | None]]] = {
    "email.opened": _check_opened,
    "deal.stage_changed": _check_deal,
    "spend.recorded": _check_spend,
}


def _schema(check: Validator) -> Any:
    if isinstance(check, int):
        return Annotated[str, msgspec.Meta(min_length=1, max_length=check)]
    return check.schema()


def _struct(type_: str, spec: TypeSpec) -> type[msgspec.Struct]:
    """The same field checks as ``_compile``, as a msgspec type its decoder checks in C.
    ``ts`` is only typed here: its text is read by ``parse_ts``."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("event_id", _schema(128)), ("ts", Union[str, int])]  # noqa: UP007
    for name, check, required in _fields(spec):
        fields.append((name, _schema(check)) if required else
                      (name, Union[_schema(check), None], None))  # noqa: UP007
    name = "".join(w.capitalize() for w in re.split(r"[._]", type_))  # EmailSent
    # unknown fields go the slow way: msgspec skips their values more leniently than orjson
    # reads them (e.g. 1e999), and the two paths must accept exactly the same messages
    struct = msgspec.defstruct(name, fields, kw_only=True, tag_field="type", tag=type_,
                               module=__name__, forbid_unknown_fields=True, gc=False)
    return struct


_STRUCTS: Final = {t: _struct(t, spec) for t, spec in EVENT_TYPES.items()}
_FINISH: Final = {t: _finish(t, spec) for t, spec in EVENT_TYPES.items()}
#: event type -> (its family, its checks on a dict)
_COMPILED: Final = {t: (spec.family, _compile(t, spec, _STRUCTS[t], _FINISH[t]))
                    for t, spec in TYPES.items()}
#: struct type -> (its event type's family, defaults and cross-field checks)
_FAST: Final = {_STRUCTS[t]: (spec.family, _FINISH[t]) for t, spec in TYPES.items()}


_DECODE: Final = msgspec.json.Decoder(Union[tuple(_FAST)]).decode  # noqa: UP007
_DECODE_ERRORS: Final = msgspec.DecodeError  # ValidationError is one


def struct_of(type_: str) -> type[msgspec.Struct]:
    """The msgspec struct an event of this type carries as its ``data``."""
    return _STRUCTS[type_]


def event_fields(type_: str) -> frozenset[str]:
    """The fields an event of this type carries as attributes of its ``data``."""
    return frozenset(_STRUCTS[type_].__struct_fields__)


Parser = Callable[[bytes | str], Event | Invalid]


def event_parser(*, now_ms: int, currency: str = "EUR", topic_family: str | None = None
                 ) -> Parser:
    """``parse(raw) -> Event | Invalid`` for messages read at ``now_ms``, from a topic of
    ``topic_family`` (None: any). Never raises: anything unusable becomes ``Invalid(reason)``.

    Fast path: msgspec's decoder makes every field check in C into the type's struct, which
    is then finished exactly as ``validate`` finishes the one it builds. Anything the fast
    path does not accept (every invalid input) goes through ``validate``, which gives the
    reason: so both paths accept the same events, and only the slow one explains
    rejections.
    """
    limit = now_ms + FUTURE_TOLERANCE_MS
    decode, fast, seconds, millis = _DECODE, _FAST, SECOND_MS, MILLIS
    errors = _DECODE_ERRORS

    def parse(raw: bytes | str) -> Event | Invalid:
        if len(raw) > MAX_EVENT_BYTES:
            return _TOO_LARGE
        try:
            s = decode(raw)
        except (errors, RecursionError):  # deep nesting: the slow path tells it apart
            return _parse_slow(raw, now_ms, currency, topic_family)
        family, finish = fast[type(s)]
        if topic_family is None or family == topic_family:
            raw_ts = s.ts
            ts_ms = None
            if type(raw_ts) is str:  # parse_utc_fast, inlined: it runs once per event
                base = seconds.get(raw_ts[:19])
                if base is not None:
                    ms = millis.get(raw_ts[19:])
                    if ms is not None:
                        ts_ms = base + ms
            if ts_ms is None:
                ts_ms = parse_ts(raw_ts)
            if ts_ms is not None and OLDEST_TS_MS <= ts_ms <= limit:
                ev = finish(s, s.event_id, ts_ms, currency)
                if type(ev) is Event:
                    return ev
        return _parse_slow(raw, now_ms, currency, topic_family)

    return parse


def parse_event(
    raw: bytes | str, *, now_ms: int, currency: str = "EUR", topic_family: str | None = None
) -> Event | Invalid:
    """Parse one message (see ``event_parser``, the form for many messages)."""
    return event_parser(now_ms=now_ms, currency=currency, topic_family=topic_family)(raw)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON containers nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if type(v) is not dict and type(v) is not list:
            continue
        if depth > limit:
            return True
        children: Iterable[Any] = v.values() if type(v) is dict else v
        stack.extend((c, depth + 1) for c in children if type(c) in (dict, list))
    return False


_TOO_LARGE: Final = Invalid("too_large")
_TOO_DEEP: Final = Invalid("too_deep")
_NOT_JSON: Final = Invalid("not_json")


def _parse_slow(raw: bytes | str, now_ms: int, currency: str, topic_family: str | None
                ) -> Event | Invalid:
    if len(raw) > MAX_EVENT_BYTES:
        return _TOO_LARGE
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson reads up to 1024 levels; deeper is refused as such, never recursed into
        return _TOO_DEEP if "depth limit" in str(exc) else _NOT_JSON
    if _deeper_than(d, MAX_DEPTH):
        return _TOO_DEEP
    return validate(d, now_ms=now_ms, currency=currency, topic_family=topic_family)


#: every reason code validate() can produce, for docs, metrics pre-registration and tests
def reason_codes() -> list[str]:
    fields: set[str] = {"event_id", "ts", "type"}
    for spec in TYPES.values():
        fields.update(n for n, _ in spec.required + spec.optional)
    fields.update(n for n, _ in ENVELOPE_LEN)
    codes = ["not_json", "not_object", "too_large", "too_deep", "unknown_type", "wrong_topic",
             "future_ts", "ancient_ts", "currency", "missing_field:campaign_id_or_channel"]
    codes += [f"missing_field:{f}" for f in sorted(fields | {"amount"})]
    codes += [f"bad_value:{f}" for f in sorted(fields - {"type"})]
    return codes
