"""The catalog's `evaluators:` section: evaluators for every chat request of a project
or of one API key, on top of the model's own and the request's `evaluate`::

    evaluators:
      projects:
        search-team: [{type: refusal}]
      keys:
        key_0a0e94c1: [{type: judge, model: gpt-4o, rubric: "...", sample_rate: 0.05}]

Specs are validated like a model's (services.common.evaluators); a judge must be a
chat model of this catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from interlock.catalog.v1 import catalog_pb2 as pb
from services.common.evaluators import EvaluatorSpecError, parse_evaluators

if TYPE_CHECKING:
    from services.catalog.config import _Reader

SECTION_KEYS: Final = ("projects", "keys")


def parse_scoped_evaluators(r: _Reader, raw: object, models: Mapping[str, pb.Model]) -> list[pb.ScopedEvaluators]:
    if raw is None:
        return []
    node = r.mapping(raw, "evaluators")
    r.only(node, SECTION_KEYS, "evaluators")
    scoped: list[pb.ScopedEvaluators] = []
    for section in SECTION_KEYS:
        for owner, specs in r.mapping(node.get(section) or {}, f"evaluators.{section}").items():
            path = f"evaluators.{section}.{owner}"
            if not isinstance(owner, str) or not owner:
                raise r.fail(path, "must be named by a non-empty string (quote it in YAML)")
            try:
                evaluators = parse_evaluators(specs, path)
            except EvaluatorSpecError as exc:
                raise r.fail(exc.path, exc.problem) from exc
            for j, spec in enumerate(evaluators):
                judge = models.get(spec.judge_model)
                if spec.kind == "judge" and (judge is None or judge.type != pb.MODEL_TYPE_CHAT):
                    raise r.fail(f"{path}[{j}].model", f"{spec.judge_model!r} is not a chat model here")
            entry = pb.ScopedEvaluators(evaluators=evaluators)
            if section == "projects":
                entry.project = owner
            else:
                entry.key_id = owner
            scoped.append(entry)
    return scoped
