"""Where a fetched message stands against the state (streams/gaps.py), also when the broker
cannot answer: the worker never stops on it, and nothing is applied out of order."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError, UnknownError

from streams.gaps import Gaps, follows

TP = ("in", 0)


class Broker:
    """What Gaps asks of the consumer; ``away`` makes every question fail."""

    def __init__(self, start: int = 0, first: int | None = None) -> None:
        self.start, self.first = start, first
        self.away: BaseException | None = None
        self.seeks: list[tuple[tuple[str, int], int]] = []
        self.positions: dict[tuple[str, int], int | None] = {}
        self.asked = 0

    async def log_start(self, tp: tuple[str, int]) -> int:
        self.asked += 1
        if self.away is not None:
            raise self.away
        return self.start

    async def first_offset(self, tp: tuple[str, int], start: int) -> int | None:
        self.asked += 1
        if self.away is not None:
            raise self.away
        return self.first

    async def seek(self, tp: tuple[str, int], offset: int) -> None:
        self.seeks.append((tp, offset))

    async def position(self, tp: tuple[str, int]) -> int | None:
        return self.positions.get(tp)


def test_only_the_next_offset_extends_the_applied_prefix() -> None:
    assert follows(7, None, None) == "apply"  # first message the state sees
    assert follows(8, 7, None) == "apply"
    assert follows(7, 7, None) == "replayed"
    assert follows(3, 7, None) == "replayed"
    # 8 missing: a batch fetched before a restore or rebalance; read again from 8
    assert follows(12, 7, None) == "hole"
    assert follows(12, 7, 9) == "hole"  # the log has 9: 8 and 9 are still to come
    # the broker says the log's first record after 7 is 12: a gap of its own (transaction
    # markers, retention), passed over
    assert follows(12, 7, 12) == "apply"


def test_a_broker_that_cannot_say_where_a_log_starts_leaves_it_unknown_until_it_can() -> None:
    """A broker back empty answers UnknownError while it elects leaders, an absent one
    refuses the connection: the partition's start stays unknown (the shard reads the
    message again later), it is not taken for 0, and the next question asks again."""
    broker, gaps = Broker(start=5), Gaps()

    async def go() -> None:
        for error in (UnknownError(), KafkaConnectionError("closed"), TimeoutError()):
            broker.away = error
            assert await gaps.before_start(broker, TP) is None
        broker.away = None
        assert await gaps.before_start(broker, TP) == 4
        asked = broker.asked
        assert await gaps.before_start(broker, TP) == 4  # known now: not asked again
        assert broker.asked == asked
        gaps.restart()  # a new tenure: the log may have moved on
        broker.start = 9
        assert await gaps.before_start(broker, TP) == 8

    asyncio.run(go())


def test_a_gap_the_broker_cannot_confirm_is_read_again_never_passed_over() -> None:
    broker, gaps = Broker(first=12), Gaps()

    async def go() -> None:
        # not yet read again from 8: a stale batch, the broker is not asked
        assert await gaps.where(broker, TP, 12, 7) == "hole" and broker.asked == 0
        await gaps.reread(broker, TP, 8)
        assert broker.seeks == [(TP, 8)]
        broker.away = KafkaConnectionError("closed")
        assert await gaps.where(broker, TP, 12, 7) == "hole"  # unconfirmed: not passed
        broker.away = None
        assert await gaps.where(broker, TP, 12, 7) == "apply"  # the log's own gap
        asked = broker.asked
        assert await gaps.where(broker, TP, 12, 7) == "apply" and broker.asked == asked

    asyncio.run(go())


def test_skipped_messages_are_looked_for_only_where_the_log_start_is_known() -> None:
    broker, gaps = Broker(start=0), Gaps()
    broker.positions = {TP: 30, ("in", 1): 40}

    async def go() -> None:
        applied = {("in", 1): 39}
        owned = {TP, ("in", 1)}
        await gaps.find_skipped(broker, owned, applied)  # first look: positions noted
        broker.away = UnknownError()
        await gaps.find_skipped(broker, owned, applied)  # TP's start unknown: left alone
        assert broker.seeks == []
        broker.away = None
        await gaps.find_skipped(broker, owned, applied)  # standing still at 30: from 0
        assert broker.seeks == [(TP, 0)]
        await gaps.find_skipped(broker, owned, applied)  # once per offset
        assert broker.seeks == [(TP, 0)]

    asyncio.run(go())
