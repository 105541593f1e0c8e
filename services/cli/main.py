"""interlock: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.cli.up import UpOptions, run_up


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="interlock", description="Interlock LLM API gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start every service and the edge on this machine")
    up.add_argument("--host", default="127.0.0.1", help="address the edge listens on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="port the edge listens on (default 8080)")
    up.add_argument("--data-dir", type=Path, default=Path(".interlock"), help="where SQLite files live")
    up.add_argument("--config", type=Path, default=None, help="catalog YAML (default: the shipped catalog)")
    args = parser.parse_args(argv)
    if args.command == "up":
        sys.exit(run_up(UpOptions(host=args.host, port=args.port, data_dir=args.data_dir, config=args.config)))


if __name__ == "__main__":
    main()
