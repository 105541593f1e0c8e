"""interlock: the operator's command line.

`interlock up` runs the stack; `keys`, `projects` and `models` talk to a
running gateway over its REST API. Settings are read from the environment
once, here, and become the defaults of --url, --admin-key and --api-key.
Exit codes: 0 ok, 1 the gateway refused or could not be reached (message on
stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.cli import keys, models
from services.cli.admin_client import AdminClient, CliError
from services.cli.up import COLOCATED, MICROSERVICES, MODES, UpOptions, run_up

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Settings:
    """What the client commands take from the environment."""

    url: str
    admin_key: str | None
    api_key: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            url=env.get("INTERLOCK_URL") or DEFAULT_URL,
            admin_key=env.get("INTERLOCK_ADMIN_KEY") or None,
            api_key=env.get("INTERLOCK_API_KEY") or None,
        )


def _client_options(settings: Settings) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Parent parsers: (--url, --admin-key) for admin commands, (--url, --api-key) for models."""
    url_help = f"gateway URL (default: $INTERLOCK_URL or {DEFAULT_URL}; now {settings.url})"
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--url", default=settings.url, help=url_help)
    admin.add_argument(
        "--admin-key",
        default=settings.admin_key,
        metavar="KEY",
        help="admin key (default: $INTERLOCK_ADMIN_KEY; prefer the variable: arguments show in `ps`)",
    )
    admin.set_defaults(credential="admin")
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", default=settings.url, help=url_help)
    api.add_argument(
        "--api-key",
        default=settings.api_key,
        metavar="KEY",
        help="an ordinary API key (default: $INTERLOCK_API_KEY; the admin key is not one)",
    )
    api.set_defaults(credential="api")
    return admin, api


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlock", description="Interlock LLM API gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start every service and the edge on this machine")
    up.add_argument("--host", default="127.0.0.1", help="address the edge (or Envoy) listens on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="port the edge (or Envoy) listens on (default 8080)")
    up.add_argument("--data-dir", type=Path, default=Path(".interlock"), help="where SQLite files live")
    up.add_argument("--config", type=Path, default=None, help="catalog YAML (default: the shipped catalog)")
    up.add_argument(
        "--envoy",
        action="store_true",
        help="front the edge with Envoy on --host/--port (the edge moves to a loopback port behind it)",
    )
    up.add_argument("--tls-cert", type=Path, default=None, help="with --envoy: PEM certificate chain for HTTPS")
    up.add_argument("--tls-key", type=Path, default=None, help="with --envoy: PEM private key for HTTPS")
    up.add_argument(
        "--mode",
        choices=MODES,
        default=COLOCATED,
        help=f"{COLOCATED} (default): the router runs inside each edge worker; "
        f"{MICROSERVICES}: the router is its own process, called over gRPC",
    )
    up.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"{COLOCATED} mode: edge worker processes sharing the port (default: one per core, now {os.cpu_count()})",
    )
    admin_options, api_options = _client_options(settings)
    keys.add_parsers(commands, [admin_options])
    models.add_parser(commands, [api_options])
    return parser


def _credential(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.credential == "api":
        if not args.api_key:
            parser.error(
                "`interlock models` needs an ordinary API key: set INTERLOCK_API_KEY or pass --api-key "
                "(the admin key is not a valid API key)"
            )
        return str(args.api_key)
    if not args.admin_key:
        parser.error(f"`interlock {args.command}` needs the admin key: set INTERLOCK_ADMIN_KEY or pass --admin-key")
    return str(args.admin_key)


def _hint(args: argparse.Namespace, error: CliError) -> str:
    if error.status not in (401, 403):
        return ""
    if args.credential == "api":
        return "\nhint: check --api-key / INTERLOCK_API_KEY"
    return "\nhint: check --admin-key / INTERLOCK_ADMIN_KEY"


def run_client_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # A command may check its arguments as a whole (argparse checks them one by one).
    check = getattr(args, "check", None)
    if check is not None and (problem := check(args)):
        parser.error(problem)
    key = _credential(args, parser)
    try:
        with AdminClient(args.url, key) as client:
            args.handler(args, client)
    except CliError as error:
        print(f"interlock: error: {error.message}{_hint(args, error)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env(os.environ)
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    if args.command == "up":
        if (args.tls_cert or args.tls_key) and not args.envoy:
            parser.error("--tls-cert and --tls-key need --envoy (the edge itself speaks plain HTTP)")
        if args.workers is not None and args.mode != COLOCATED:
            parser.error(f"--workers applies to --mode {COLOCATED} only ({MICROSERVICES} runs one edge and one router)")
        if args.workers is not None and args.workers < 1:
            parser.error("--workers must be at least 1")
        options = UpOptions(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            config=args.config,
            envoy=args.envoy,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            mode=args.mode,
            workers=args.workers,
        )
        sys.exit(run_up(options))
    sys.exit(run_client_command(args, parser))


if __name__ == "__main__":
    main()
