"""Legacy completions and embeddings codecs, and the base64 float32 vector encoding."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from services.common.errors import InvalidRequestError
from services.common.wire.completions import (
    completion_from_json,
    completion_request_to_json,
    completion_to_json,
    parse_completion_request,
)
from services.common.wire.embeddings import MAX_INPUTS, decode_vector, encode_vector, parse_embedding_request
from services.common.wire.fields import INVALID_TYPE, INVALID_VALUE, MISSING


def _raises(fn: Any, body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        fn(body)
    assert info.value.http_status == 400
    return info.value


# ---------------------------------------------------------------- completions


def test_completion_string_prompt_round_trip() -> None:
    body = {"model": "demo-instruct", "prompt": "Once upon", "max_tokens": 5, "echo": True, "suffix": "end",
            "best_of": 2, "logprobs": 0, "stream": True, "route": {"provider": "demo"},
            "foo_extra": [1, 2]}  # fmt: skip
    request, stream = parse_completion_request(body)
    assert stream is True and list(request.prompts) == ["Once upon"]
    out = completion_request_to_json(request, "up", stream=False)
    assert out == {"model": "up", "prompt": "Once upon", "max_tokens": 5, "echo": True, "suffix": "end",
                   "best_of": 2, "logprobs": 0, "foo_extra": [1, 2]}  # fmt: skip


def test_completion_list_prompt_and_stream_usage() -> None:
    request, stream = parse_completion_request({"model": "m", "prompt": ["a", "b"]})
    assert stream is False
    out = completion_request_to_json(request, "up", stream=True)
    assert out["prompt"] == ["a", "b"]
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("count", [0, 3, 5])
def test_legacy_logprobs_is_a_count(count: int) -> None:
    request, _ = parse_completion_request({"model": "m", "prompt": "x", "logprobs": count})
    assert request.sampling.HasField("top_logprobs") and request.sampling.top_logprobs == count
    assert not request.sampling.HasField("logprobs")
    assert completion_request_to_json(request, "u", stream=False)["logprobs"] == count


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs", INVALID_VALUE),
        ({"model": "m", "prompt": "x", "logprobs": True}, "logprobs", INVALID_TYPE),
        ({"model": "m", "prompt": [1, 2, 3]}, "prompt", INVALID_VALUE),
        ({"model": "m", "prompt": [[1, 2], [3]]}, "prompt", INVALID_TYPE),
        ({"model": "m", "prompt": []}, "prompt", INVALID_TYPE),
        ({"model": "m"}, "prompt", MISSING),
        ({"model": "m", "prompt": "x", "best_of": 21}, "best_of", INVALID_VALUE),
        ({"model": "m", "prompt": "x", "echo": "yes"}, "echo", INVALID_TYPE),
    ],
)
def test_completion_bad_input(body: dict[str, Any], param: str, code: str) -> None:
    error = _raises(parse_completion_request, body)
    assert (error.param, error.code) == (param, code)


def test_token_id_prompt_message_says_send_text() -> None:
    assert "token ids" in _raises(parse_completion_request, {"model": "m", "prompt": [1, 2]}).message


def test_completion_response_round_trip() -> None:
    raw = {"id": "cmpl-1", "object": "text_completion", "created": 9, "model": "m", "system_fingerprint": "fp",
           "choices": [{"text": " there", "index": 0, "logprobs": {"tokens": [" there"], "token_logprobs": [-0.5]},
                        "finish_reason": "length"}],
           "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}  # fmt: skip
    out = completion_to_json(completion_from_json(raw))
    assert {k: out[k] for k in ("id", "object", "created", "model", "system_fingerprint", "choices")} == {
        k: raw[k] for k in ("id", "object", "created", "model", "system_fingerprint", "choices")
    }
    assert out["usage"]["total_tokens"] == 3


# ---------------------------------------------------------------- embeddings


def test_embedding_inputs_of_every_shape() -> None:
    request, encoding = parse_embedding_request({"model": "e", "input": "hello"})
    assert list(request.inputs) == ["hello"] and encoding == "float"
    request, _ = parse_embedding_request({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
    assert list(request.inputs) == ["a", "b"]
    request, _ = parse_embedding_request({"model": "e", "input": [1, 2, 3]})
    assert [list(t.tokens) for t in request.token_inputs] == [[1, 2, 3]] and not request.inputs
    request, _ = parse_embedding_request({"model": "e", "input": [[1, 2], [3]], "dimensions": 8})
    assert [list(t.tokens) for t in request.token_inputs] == [[1, 2], [3]] and request.dimensions == 8


def test_embedding_max_inputs_is_inclusive() -> None:
    request, _ = parse_embedding_request({"model": "e", "input": ["x"] * MAX_INPUTS})
    assert len(request.inputs) == 2048


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "e", "input": []}, "input", INVALID_TYPE),
        ({"model": "e", "input": ""}, "input", INVALID_VALUE),
        ({"model": "e", "input": ["ok", ""]}, "input", INVALID_VALUE),
        ({"model": "e", "input": ["x"] * (MAX_INPUTS + 1)}, "input", INVALID_VALUE),
        ({"model": "e", "input": ["a", 1]}, "input", INVALID_TYPE),
        ({"model": "e", "input": [[]]}, "input", INVALID_TYPE),
        ({"model": "e"}, "input", MISSING),
        ({"model": "e", "input": "x", "encoding_format": "hex"}, "encoding_format", INVALID_VALUE),
        ({"model": "e", "input": "x", "encoding_format": 1}, "encoding_format", INVALID_TYPE),
        ({"model": "e", "input": "x", "dimensions": 0}, "dimensions", INVALID_VALUE),
    ],
)
def test_embedding_bad_input(body: dict[str, Any], param: str, code: str) -> None:
    error = _raises(parse_embedding_request, body)
    assert (error.param, error.code) == (param, code)


def test_embedding_token_beyond_int64_is_a_400_not_a_crash() -> None:
    # orjson parses integers up to 2**64-1, so such a body reaches the codec.
    error = _raises(parse_embedding_request, {"model": "e", "input": [2**63]})
    assert error.param == "input"


# ---------------------------------------------------------------- vectors


def test_base64_is_little_endian_float32() -> None:
    encoded = encode_vector([1.0, -2.0], "base64")
    assert encoded == "AACAPwAAAMA="  # 0x3f800000, 0xc0000000 little endian
    assert decode_vector(encoded) == [1.0, -2.0]


def test_base64_round_trip_is_float32_precise() -> None:
    values = [0.1, -0.333, 12345.678, 0.0, 1e-8]
    encoded = encode_vector(values, "base64")
    assert isinstance(encoded, str) and len(base64.b64decode(encoded)) == 4 * len(values)
    decoded = decode_vector(encoded)
    assert decoded == [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]
    assert decoded == pytest.approx(values, rel=1e-6)


def test_float_encoding_and_lenient_decode() -> None:
    assert encode_vector((0.5, 0.25), "float") == [0.5, 0.25]
    assert decode_vector([1, 2]) == [1.0, 2.0]
    assert decode_vector(None) == []
