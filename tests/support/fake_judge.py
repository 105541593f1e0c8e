"""FakeOpenAI with a few upstream models whose answers the evaluation tests control.

- "verbatim": answers the last user message as it is (no "Echo: "), so a JSON prompt
  gives a JSON answer;
- "weak" / "strong": always answer "weak answer" / "strong answer";
- "judge": answers like a judge asked for {"score", "reason"}: 0.9 when the quoted
  ANSWER says "strong", 0.2 otherwise, or `judge_reply` verbatim when a test sets it
  (junk, to see the evaluator error recorded).
Everything else is FakeOpenAI's echo. Same wire format, same controls.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import Response

from tests.support.fake_openai import FakeOpenAI

JSON = dict[str, Any]


def _text(content: Any) -> str:
    return content if isinstance(content, str) else ""


class FakeJudge(FakeOpenAI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.judge_reply: str | None = None
        self.judged: list[str] = []  # the ANSWER part of every prompt the judge saw

    def reset(self) -> None:
        super().reset()
        self.judge_reply = None
        self.judged = []

    async def _chat(self, body: JSON) -> Response:
        model = body.get("model")
        messages = body.get("messages") or []
        last_user = next(
            (_text(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), ""
        )
        if model == "verbatim" and not body.get("stream"):
            return self._answer_text(model, last_user)
        if model in ("weak", "strong") and not body.get("stream"):
            return self._answer_text(model, f"{model} answer")
        if model == "judge":
            answer = last_user.rsplit("ANSWER:\n", 1)[-1]
            self.judged.append(answer)
            score = 0.9 if "strong" in answer else 0.2
            reply = self.judge_reply if self.judge_reply is not None else f'{{"score": {score}, "reason": "fake"}}'
            return self._answer_text(model, reply)
        return await super()._chat(body)

    def _answer_text(self, model: str, text: str) -> Response:
        words = len(text.split())
        return self._json(
            {
                "id": f"chatcmpl-judge{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words},
            }
        )
