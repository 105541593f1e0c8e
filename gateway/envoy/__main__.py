"""python -m gateway.envoy render --profile local|cluster [...]: print the Envoy bootstrap.
python -m gateway.envoy run --config FILE: become Envoy (how `interlock up --envoy` starts it).

The cluster profile's defaults are what k8s/ mounts and names; every default can be
overridden. Exit codes: 0 written, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.envoy.options import DEFAULT_MAX_BODY_BYTES, PROFILES, UPSTREAM_NAMES, build_options
from gateway.envoy.process import exec_envoy
from gateway.envoy.render import render
from services.common.errors import ConfigError

_ADDRESS_FLAGS = {
    "listen": "public listener (cluster: 0.0.0.0:8443; local: 127.0.0.1:8080, or :8443 with TLS)",
    "grpc_listen": "plaintext HTTP/2 listener for internal gRPC clients",
    "probe_listen": "readiness listener: GET /ready",
    "admin": "admin interface (loopback only)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.envoy", description="Render Interlock's Envoy config.")
    commands = parser.add_subparsers(dest="command", required=True)
    render_cmd = commands.add_parser("render", help="print the Envoy v3 bootstrap YAML")
    render_cmd.add_argument("--profile", choices=PROFILES, required=True)
    for name, text in _ADDRESS_FLAGS.items():
        render_cmd.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="HOST:PORT", help=text)
    for name in UPSTREAM_NAMES:
        render_cmd.add_argument(f"--{name}", metavar="ADDR", help=f"where the {name} listens (HOST:PORT)")
    render_cmd.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for the public listener")
    render_cmd.add_argument("--tls-key", metavar="FILE", help="PEM private key for the public listener")
    render_cmd.add_argument("--access-log", metavar="PATH", help="JSON access log file (default /dev/stdout)")
    render_cmd.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body (default: the edge's INTERLOCK_MAX_BODY_BYTES default, 10 MiB)",
    )
    render_cmd.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    run_cmd = commands.add_parser("run", help="exec Envoy on a rendered config, dying with the supervisor")
    run_cmd.add_argument("--config", type=Path, required=True)
    run_cmd.add_argument("--log-level", default="warning")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            exec_envoy(args.config, args.log_level, os.environ)
        except ConfigError as exc:
            parser.error(str(exc))
    given = {
        name: getattr(args, name) for name in (*_ADDRESS_FLAGS, *UPSTREAM_NAMES, "tls_cert", "tls_key", "access_log")
    }
    try:
        options = build_options(args.profile, given, args.max_body_bytes)
    except ConfigError as exc:
        parser.error(str(exc))
    text = render(options)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
