"""The engine's state as explicit, versioned records (msgspec), and their bytes.

Every part of the engine owns a typed state (windows.WindowsState, clock.WatermarkState,
dedup.DedupState, publish.PublisherState, each tracker's ``state_type``); this module
gathers them into one ``EngineState`` and encodes it as MessagePack. Decoding checks every
field's type against the schema and builds plain data only: a corrupt or hostile record
raises ``StateError``, it never runs code (no pickle anywhere in the state path).
"""

from __future__ import annotations

from typing import Final

import msgspec

from metrics.clock import HeldEvent, WatermarkState
from metrics.dedup import DedupState
from metrics.errors import StateError
from metrics.publish import PublisherState
from metrics.windows import WindowsState

#: raised whenever the layout of EngineState or of any part's state changes
ENGINE_STATE_VERSION: Final = 1


class Counters(msgspec.Struct, gc=False):
    events_total: dict[str, int]  # event type -> valid events counted
    duplicates_total: int
    late_total: dict[str, int]  # family -> events found late
    due: bool  # a watermark passed a window close: advance() has work


class EngineState(msgspec.Struct, gc=False):
    version: int
    windows: dict[str, WindowsState]  # per family
    watermarks: dict[str, WatermarkState]  # per family
    held: dict[str, list[HeldEvent]]  # per family
    dedup: dict[str, DedupState]  # per shard
    #: tracker name -> its state, encoded (each tracker decodes its own ``state_type``)
    trackers: dict[str, msgspec.Raw]
    publisher: PublisherState
    counters: Counters


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(EngineState)


def encode_part(part: msgspec.Struct) -> msgspec.Raw:
    return msgspec.Raw(_ENCODER.encode(part))


def decode_part(raw: msgspec.Raw | bytes, type_: type[msgspec.Struct], what: str
                ) -> msgspec.Struct:
    try:
        return msgspec.msgpack.decode(raw, type=type_)
    except (msgspec.DecodeError, ValueError) as exc:
        raise StateError(f"state of {what} is unreadable: {exc}") from None


def encode_state(state: EngineState) -> bytes:
    return _ENCODER.encode(state)


def decode_state(blob: bytes) -> EngineState:
    """The engine state in ``blob``, checked against the schema; ``StateError`` otherwise."""
    try:
        state = _DECODER.decode(blob)
    except (msgspec.DecodeError, ValueError) as exc:
        raise StateError(f"engine state is unreadable: {exc}") from None
    if state.version != ENGINE_STATE_VERSION:
        raise StateError(f"engine state version {state.version}, this engine reads "
                         f"{ENGINE_STATE_VERSION}")
    return state
