"""What every check shares."""

from __future__ import annotations

from tests.support.manifests import Obj

# One message per inconsistency; empty when the manifests are consistent.
Problems = list[str]


def describe(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"
