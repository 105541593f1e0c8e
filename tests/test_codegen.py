"""Generated protobuf code is produced by one script and is never stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_generated_code_is_up_to_date(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(repo_root / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_detects_a_stale_file(repo_root: Path, tmp_path: Path) -> None:
    # Run the checker on a copy of protos/ whose generated file was edited by hand.
    import shutil

    copy = tmp_path / "protos"
    shutil.copytree(repo_root / "protos", copy)
    target = copy / "interlock" / "usage" / "v1" / "usage_pb2.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    result = subprocess.run(
        [sys.executable, str(copy / "generate.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "stale: interlock/usage/v1/usage_pb2.py" in result.stderr
