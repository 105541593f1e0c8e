"""Every consistency check passes on every kustomization, and rejects the broken fixture
made for it (tests/k8s/fixtures/<check>__<case>.yaml, whose `# expect:` line is the
problem it must report)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.k8s import checks
from tests.support import manifests
from tests.support.manifests import Manifests

FIXTURES = Path(__file__).parent / "fixtures"
DOCUMENTED = manifests.documented_secrets()


def run(name: str, m: Manifests) -> checks.Problems:
    """A check with the inputs it takes: the README's Secrets for references; for addresses,
    the README's example values where they apply (the in-cluster datastores of the data
    component, which dev and what is built on it have)."""
    check = checks.CHECKS[name]
    if name == "references_resolve":
        return check(m, DOCUMENTED)
    if name in ("addresses_resolve", "network_allows_flows"):
        return check(m, DOCUMENTED if m.get("Service", "postgres") is not None else None)
    return check(m)


@pytest.mark.parametrize("target", manifests.TARGETS)
@pytest.mark.parametrize("name", sorted(checks.CHECKS))
def test_real_manifests_pass(name: str, target: str) -> None:
    assert run(name, Manifests(manifests.render(target))) == []


def _fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*__*.yaml"))


def test_every_check_has_a_broken_fixture() -> None:
    covered = {path.name.split("__")[0] for path in _fixtures()}
    # envoy_config_matches_pod breaks the real rendered config instead (below).
    assert set(checks.CHECKS) - covered == {"envoy_config_matches_pod"}
    assert covered <= set(checks.CHECKS)


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: p.stem)
def test_broken_fixture_rejected(path: Path) -> None:
    expected = re.search(r"^# expect: (.+)$", path.read_text(), re.MULTILINE)
    assert expected is not None, f"{path.name} has no '# expect:' line"
    problems = run(path.name.split("__")[0], Manifests(manifests.load(path)))
    assert any(expected.group(1) in problem for problem in problems), problems


def _with_envoy_config(edit: object) -> Manifests:
    """The dev overlay with its Envoy config changed by edit(config)."""
    objects = manifests.render("overlays/dev")
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and "envoy.yaml" in (o.get("data") or {}))
    config = yaml.safe_load(config_map["data"]["envoy.yaml"])
    edit(config)  # type: ignore[operator]
    config_map["data"]["envoy.yaml"] = yaml.safe_dump(config)
    return Manifests(objects)


def test_envoy_listener_on_undeclared_port_rejected() -> None:
    def edit(config: dict) -> None:
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 443

    problems = checks.envoy_config_matches_pod(_with_envoy_config(edit))
    assert any("binds 443, not a container port" in p for p in problems), problems


def test_envoy_admin_off_loopback_rejected() -> None:
    def edit(config: dict) -> None:
        config["admin"]["address"]["socket_address"]["address"] = "0.0.0.0"

    problems = checks.envoy_config_matches_pod(_with_envoy_config(edit))
    assert "envoy/envoy: the admin interface listens on 0.0.0.0, not loopback" in problems


def test_envoy_reading_unmounted_file_rejected() -> None:
    def edit(config: dict) -> None:
        text = yaml.safe_dump(config).replace("/etc/envoy/tls/tls.key", "/etc/ssl/private/tls.key")
        config.clear()
        config.update(yaml.safe_load(text))

    problems = checks.envoy_config_matches_pod(_with_envoy_config(edit))
    assert "envoy/envoy: reads /etc/ssl/private/tls.key, which is not mounted" in problems


def test_addresses_follow_documented_secret_values() -> None:
    """The README's example datastore URLs point at the data component's Services; a wrong
    port in them is caught like one in a ConfigMap."""
    dev = Manifests(manifests.render("overlays/dev"))
    flows = manifests.flows(dev, DOCUMENTED)
    assert {(f.source.name, f.service, f.port) for f in flows} >= {
        ("catalog", "postgres", 5432),
        ("usage", "postgres", 5432),
        ("ratelimit", "redis", 6379),
    }
    wrong = {
        **DOCUMENTED,
        "interlock-datastores": {**DOCUMENTED["interlock-datastores"], "redis-url": "redis://redis:6380/0"},
    }
    assert checks.addresses_resolve(dev, wrong) == [
        "ratelimit ratelimit INTERLOCK_RATELIMIT_REDIS_URL: Service 'redis' has no port 6380"
    ]
