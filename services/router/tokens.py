"""Token counting for context checks, cost estimates and the demo provider.

A word-and-punctuation tokenizer: pieces concatenate back to the text, so
streamed pieces and counted tokens always agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from interlock.router.v1 import router_pb2 as pb
from services.common.wire.chat import message_text

_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
# Per-message framing overhead, as OpenAI counts it for chat models.
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3
IMAGE_TOKENS = 85


def tokenize(text: str) -> list[str]:
    return _PIECE.findall(text)


def count_text(text: str) -> int:
    return len(_PIECE.findall(text))


def count_messages(messages: Iterable[pb.Message]) -> int:
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + count_text(message_text(message))
        total += IMAGE_TOKENS * sum(1 for p in message.parts if p.WhichOneof("part") == "image_url")
        for call in message.tool_calls:
            total += count_text(call.function.name) + count_text(call.function.arguments)
    return total
