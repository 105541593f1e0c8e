"""The Dockerfile, checked without a Docker engine: a pinned base, a non-root user, the same
install as the README, and an image that holds every command the manifests run."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support import manifests

REPO = manifests.REPO
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((REPO / "Dockerfile").read_text())


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def installed_extras(steps: list[tuple[str, str]]) -> set[str]:
    installs = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    assert len(installs) == 1, installs
    match = re.search(r"""['"]?\.\[([\w,-]+)\]['"]?""", installs[0])
    assert match is not None, f"the image must install the project with its extras: {installs[0]}"
    return set(match.group(1).split(","))


def test_base_image_pinned(dockerfile: list[tuple[str, str]]) -> None:
    stages: set[str] = set()
    for word, rest in dockerfile:
        if word != "FROM":
            continue
        image, *alias = rest.split()
        if image not in stages:
            assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
        if alias:
            stages.add(alias[-1])


def test_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [rest for word, rest in final_stage(dockerfile) if word == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    # Numeric: runAsNonRoot can only verify a numeric user.
    assert uid.isdigit()
    assert int(uid) == 10001


def test_no_bytecode_writes(dockerfile: list[tuple[str, str]]) -> None:
    env = " ".join(rest for word, rest in final_stage(dockerfile) if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_no_per_service_command(dockerfile: list[tuple[str, str]]) -> None:
    assert not [word for word, _ in dockerfile if word in ("CMD", "ENTRYPOINT")]


def test_installs_the_readme_extras(dockerfile: list[tuple[str, str]]) -> None:
    extras = installed_extras(dockerfile)
    assert "dev" not in extras, "test tooling does not belong in the image"
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
    readme = (REPO / "README.md").read_text()
    documented = {frozenset(m.split(",")) for m in re.findall(r"pip install[^\n]*?\.\[([\w,-]+)\]", readme)}
    assert frozenset(extras) in documented


def test_dev_install_runs_the_same_envoy() -> None:
    """`make` installs .[dev]; it must carry the image's Envoy pin, so tests run that Envoy."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert set(optional["envoy"]) <= set(optional["dev"])
    assert "'.[dev]'" in (REPO / "Makefile").read_text()


def _console_scripts(requirements: list[str]) -> set[str]:
    scripts = set()
    for text in requirements:
        distribution = importlib.metadata.distribution(Requirement(text).name)
        scripts |= {e.name for e in distribution.entry_points if e.group == "console_scripts"}
    return scripts


def _patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_context(destination: Path) -> None:
    """Copy what `docker build .` would send (the files .dockerignore admits) to destination."""
    patterns = _patterns()
    reincluded = [p.lstrip("!").strip("/") for p in patterns if p.startswith("!")]
    for directory, dirs, files in os.walk(REPO):
        relative = Path(directory).relative_to(REPO)
        # Skip ignored directories unless an exception could admit something inside them.
        dirs[:] = [
            d
            for d in dirs
            if not ignored(patterns, (relative / d).as_posix())
            or any(r.startswith((relative / d).as_posix() + "/") for r in reincluded)
        ]
        for name in files:
            path = (relative / name).as_posix()
            if not ignored(patterns, path):
                (destination / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / path, destination / path)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The project's wheel built from the Docker build context, as the image's pip builds it
    (offline: the build backend comes from this venv)."""
    context = tmp_path_factory.mktemp("context")
    build_context(context)
    out = tmp_path_factory.mktemp("wheel")
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "-q", "-w", str(out), "."],
        cwd=context,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("interlock-*.whl")
    return zipfile.ZipFile(built)


def test_every_manifest_command_is_in_the_image(dockerfile: list[tuple[str, str]], wheel: zipfile.ZipFile) -> None:
    extras = installed_extras(dockerfile)
    optional = PYPROJECT["project"]["optional-dependencies"]
    scripts = _console_scripts([*PYPROJECT["project"]["dependencies"], *(r for e in extras for r in optional[e])])
    files = set(wheel.namelist())
    commands = []
    for target in manifests.TARGETS:
        for workload in manifests.Manifests(manifests.render(target)).workloads():
            for container in workload.all_containers:
                if not manifests.is_interlock_image(container["image"]):
                    continue
                commands.append([*(container.get("command") or []), *(container.get("args") or [])])
                hooks = (container.get("lifecycle") or {}).values()
                commands += [hook["exec"]["command"] for hook in hooks if "exec" in hook]
    assert commands
    for command in commands:
        assert command, "a container without a command: the image has no CMD"
        if command[0] == "python":
            assert command[1] in ("-m", "-c"), command
            module = command[2].replace(".", "/")
            if command[1] == "-m":
                assert {f"{module}/__main__.py", f"{module}.py"} & files, f"the wheel has no module {command[2]}"
        else:
            assert command[0] in scripts, f"no installed distribution provides {command[0]!r}"


def test_wheel_carries_the_data_files(wheel: zipfile.ZipFile) -> None:
    """What the processes read besides code: the shipped catalog, the Redis scripts."""
    files = set(wheel.namelist())
    assert {"services/catalog/default_catalog.yaml", "services/ratelimit/backends/acquire.lua"} <= files


def test_dockerignore_admits_only_the_build_inputs() -> None:
    patterns = _patterns()
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needed = [p for p in tracked if p.split("/")[0] in ("services", "gateway", "protos", "pyproject.toml", "README.md")]
    assert needed
    assert [p for p in needed if ignored(patterns, p)] == []
    for secret_or_noise in (
        ".interlock/secrets/key_pepper",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "services/__pycache__/x.pyc",
        "k8s/base/kustomization.yaml",
    ):
        assert ignored(patterns, secret_or_noise), secret_or_noise


def _pattern(pattern: str) -> re.Pattern[str]:
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        else:
            regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(regex)


def ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    result = False
    for raw in patterns:
        negated = raw.startswith("!")
        regex = _pattern(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negated
    return result
