"""Every rendered object validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
offline) in strict mode, for the oldest supported release and the newest the package knows.
An apiVersion with no schema in that release (removed, or never existed) fails, never warns."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from kubernetes_validate.utils import (  # type: ignore[import-untyped]
    SchemaNotFoundError,
    ValidationError,
    latest_version,
)

from tests.support import manifests

OLDEST = "1.30.0"
VERSIONS = (OLDEST, latest_version())
FIXTURES = Path(__file__).parent / "fixtures" / "schemas"


def problems(objects: list[manifests.Obj], version: str) -> list[str]:
    found = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({obj.get('apiVersion')})"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            found.append(f"{name}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            found.append(f"{name}: {exc.message}")
    return found


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", manifests.TARGETS)
def test_rendered_objects_validate(target: str, version: str) -> None:
    objects = manifests.render(target)
    assert objects
    assert problems(objects, version) == []


@pytest.mark.parametrize("name", ["removed_pdb_policy_v1beta1", "removed_hpa_autoscaling_v2beta2"])
def test_removed_api_fails(name: str) -> None:
    found = problems(manifests.load(FIXTURES / f"{name}.yaml"), OLDEST)
    assert len(found) == 1
    assert "Couldn't find schema" in found[0]


@pytest.mark.parametrize(
    ("name", "message"),
    [("unknown_field", "readinesProbe"), ("wrong_type", "'grpc' is not of type 'integer'")],
)
def test_invalid_object_fails(name: str, message: str) -> None:
    found = problems(manifests.load(FIXTURES / f"{name}.yaml"), OLDEST)
    assert len(found) == 1
    assert message in found[0]
