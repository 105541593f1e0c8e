"""Generate the Python code for every proto under protos/interlock and
protos/envoy (trimmed copies of the Envoy API that the ratelimit service
serves), in place.

The one way generated code is produced: `python protos/generate.py`. With
`--check` it generates into a scratch directory and fails if the committed
files differ, which the test suite runs so stale code cannot land.
The generator versions are pinned in pyproject.toml (grpcio-tools, mypy-protobuf).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
# The top-level packages generated here; protos/google is only for buf's imports.
PACKAGES = ("interlock", "envoy")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    path = scripts / name
    if not path.exists():
        raise SystemExit(f"{name} not found in {scripts}: install the dev extras")
    return str(path)


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (PROTO_ROOT / package).rglob("*.proto"))


def generate(out: Path) -> None:
    """Run protoc for every source proto, writing the package tree under out."""
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in _sources()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every directory on the way is a regular package so mypy and setuptools see it.
    for package in PACKAGES:
        for directory in [out / package, *(p for p in (out / package).rglob("*") if p.is_dir())]:
            (directory / "__init__.py").touch()


def _generated_files(root: Path) -> set[Path]:
    found: set[Path] = set()
    for package in PACKAGES:
        files = list((root / package).rglob("*"))
        found |= {p.relative_to(root) for p in files if p.name.endswith(GENERATED_SUFFIXES)}
        found |= {p.relative_to(root) for p in files if p.name == "__init__.py"}
    return found


def check() -> list[str]:
    """Return the generated files that are missing, extra or differ from a fresh run."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh_root = Path(scratch)
        generate(fresh_root)
        fresh = _generated_files(fresh_root)
        committed = _generated_files(PROTO_ROOT)
        problems = [f"missing: {p}" for p in sorted(fresh - committed)]
        problems += [f"extra: {p}" for p in sorted(committed - fresh)]
        problems += [
            f"stale: {p}"
            for p in sorted(fresh & committed)
            if not filecmp.cmp(fresh_root / p, PROTO_ROOT / p, shallow=False)
        ]
        return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    if args.check:
        problems = check()
        if problems:
            print("generated code is stale; run: python protos/generate.py", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
            raise SystemExit(1)
        print("generated code is up to date")
        return
    for stale in _generated_files(PROTO_ROOT):
        (PROTO_ROOT / stale).unlink()
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        for rel in _generated_files(Path(scratch)):
            target = PROTO_ROOT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(scratch) / rel, target)
    print(f"generated Python code for {len(_sources())} protos")


if __name__ == "__main__":
    main()
