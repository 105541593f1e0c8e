"""What k8s/ copies or repeats from the rest of the repository stays the same as its source."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.support import manifests

REGENERATE_ENVOY = ".venv/bin/python -m gateway.envoy render --profile cluster > k8s/base/envoy/envoy.yaml"


def test_catalog_copy_is_current() -> None:
    source = manifests.REPO / "services" / "catalog" / "default_catalog.yaml"
    copy = manifests.K8S / "base" / "config" / "catalog.yaml"
    assert copy.read_bytes() == source.read_bytes(), f"refresh it: cp {source.relative_to(manifests.REPO)} {copy}"


def test_envoy_config_is_rendered() -> None:
    rendered = subprocess.run(
        [sys.executable, "-m", "gateway.envoy", "render", "--profile", "cluster"],
        capture_output=True,
        text=True,
        check=True,
        cwd=manifests.REPO,
        timeout=120,
    ).stdout
    committed = (manifests.K8S / "base" / "envoy" / "envoy.yaml").read_text()
    assert committed == rendered, f"k8s/base/envoy/envoy.yaml is stale; regenerate it: {REGENERATE_ENVOY}"


def test_image_tag_is_the_package_version() -> None:
    """Every overlay runs the release the package says it is."""
    version = tomllib.loads((manifests.REPO / "pyproject.toml").read_text())["project"]["version"]
    for target in manifests.TARGETS:
        images = {
            c["image"]
            for w in manifests.Manifests(manifests.render(target)).workloads()
            for c in w.all_containers
            if manifests.is_interlock_image(c["image"])
        }
        assert images
        assert {image.rsplit(":", 1)[-1] for image in images} == {version}, (target, images)


def test_documented_secrets_are_used() -> None:
    """Every Secret and key the README tells an operator to create is read by some pod."""
    referenced: set[tuple[str, str]] = set()
    # Mounted whole: every key of it is read.
    mounted: set[str] = set()
    for target in manifests.TARGETS:
        for workload in manifests.Manifests(manifests.render(target)).workloads():
            for container in workload.all_containers:
                for var in container.get("env") or []:
                    ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        referenced.add((ref["name"], ref["key"]))
            for volume in workload.pod_spec.get("volumes") or []:
                secret = volume.get("secret")
                if secret and secret.get("items"):
                    referenced |= {(secret["secretName"], item["key"]) for item in secret["items"]}
                elif secret:
                    mounted.add(secret["secretName"])
    documented = {(name, key) for name, keys in manifests.documented_secrets().items() for key in keys}
    assert documented
    assert {(name, key) for name, key in documented - referenced if name not in mounted} == set()
