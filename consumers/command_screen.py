"""The executor's screen of a polled command (step 3 of ``consumers/executor.py``), in one place: the
executor dead-letters what it refuses, the look-ahead (``consumers/lookahead.py``) ignores it, so a
command that the executor would refuse never supersedes another.

A value over the size limit, bytes that do not decode as a ``KmsCommand`` (bad magic, unknown schema,
invalid record) and a command created too far in the future raise :class:`PoisonMessage`. Only
``created_at`` is screened for the future: ``not_before`` may lie ahead on purpose (scheduled messages).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from confluent_kafka import Message

from kafka_edge.dlq import screen_size, screen_times
from kafka_edge.kafka_clients import schema_id_header
from schemas.codec import Codec
from schemas.records import KmsCommand

__all__ = ["SCREENED_TIME_FIELDS", "screen_command"]

#: the command times that may not lie further ahead than the allowed skew
SCREENED_TIME_FIELDS: Final = ("created_at",)


def screen_command(codec: Codec, msg: Message, value: bytes, max_message_bytes: int,
                   max_future_skew: timedelta) -> KmsCommand:
    """The command ``value`` (the bytes of ``msg``) holds; :class:`PoisonMessage` if the executor refuses it."""
    screen_size(value, max_message_bytes)
    cmd = codec.decode(value, KmsCommand, schema_id_header(msg))
    screen_times(cmd, SCREENED_TIME_FIELDS, max_future_skew)
    return cmd
