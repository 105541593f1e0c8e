"""`interlock keys ...` and `interlock projects ...`: the admin API from the shell.

Secrets appear on stdout exactly once, when a key is created or rotated;
listings show only the masked form.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from services.cli.admin_client import AdminClient, CreatedKey, KeyInfo, Project, format_json, format_table

ONE_TIME_NOTICE = "Store it now: the secret will not be shown again."
KEY_COLUMNS = ("ID", "NAME", "PROJECT", "MASKED", "MODELS", "PLAN", "REVOKED")
PROJECT_COLUMNS = ("ID", "NAME", "RPM", "TPM", "BUDGET USD", "CREATED")
PROJECT_LIMITS = ("rpm", "tpm", "budget_usd", "budget_period")


def rfc3339(value: str) -> str:
    """An argparse type: an RFC 3339 timestamp with a zone, normalised to UTC (...Z)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 timestamp: {value!r} (try 2030-01-31T00:00:00Z)") from exc
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"timestamp needs a zone (Z or +hh:mm): {value!r}")
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + _fraction(parsed) + "Z"


def _fraction(parsed: datetime) -> str:
    return f".{parsed.microsecond:06d}".rstrip("0") if parsed.microsecond else ""


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from exc
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value!r}")
    return number


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite amount, 0 or more: {value!r}")
    return number


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], admin_options: list[argparse.ArgumentParser]
) -> None:
    """Register `keys` and `projects` under commands; admin_options carry --url and --admin-key."""
    keys = commands.add_parser("keys", help="create, list, revoke and rotate API keys (admin key)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke,rotate}")

    create = key_commands.add_parser("create", parents=admin_options, help="create a key; prints its secret once")
    create.add_argument("--name", required=True, help="a label for the key")
    create.add_argument("--project", help="project id (must exist; default: the 'default' project)")
    create.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="MODEL",
        help="a model id, glob (demo-*) or profile the key may use; repeat for more (default: every model)",
    )
    create.add_argument("--plan", help="rate-limit plan name")
    create.add_argument("--rpm", type=non_negative_int, help="requests per minute (overrides the plan)")
    create.add_argument("--tpm", type=non_negative_int, help="tokens per minute (overrides the plan)")
    create.add_argument("--burst", type=non_negative_int, help="burst size (overrides the plan)")
    create.add_argument("--budget-usd", type=non_negative_float, help="spending cap in USD")
    create.add_argument("--budget-period", choices=("total", "monthly"), help="how the cap resets (default total)")
    create.add_argument("--expires-at", type=rfc3339, help="RFC 3339 time the key stops working")
    _json_flag(create)
    create.set_defaults(handler=create_key)

    listing = key_commands.add_parser("list", parents=admin_options, help="list keys (masked)")
    listing.add_argument("--project", help="only keys of this project")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    _json_flag(listing)
    listing.set_defaults(handler=list_keys)

    revoke = key_commands.add_parser("revoke", parents=admin_options, help="revoke a key (stops working within 1 s)")
    revoke.add_argument("id", help="key id")
    _json_flag(revoke)
    revoke.set_defaults(handler=revoke_key)

    rotate = key_commands.add_parser("rotate", parents=admin_options, help="replace a key's secret; prints it once")
    rotate.add_argument("id", help="key id")
    _json_flag(rotate)
    rotate.set_defaults(handler=rotate_key)

    projects = commands.add_parser("projects", help="create, update and list projects (admin key)")
    project_commands = projects.add_subparsers(dest="projects_command", required=True, metavar="{create,update,list}")
    new_project = project_commands.add_parser("create", parents=admin_options, help="create a project")
    new_project.add_argument("--name", required=True, help="display name")
    new_project.add_argument("--id", dest="project_id", help="slug (default: made from the name)")
    _project_limit_flags(new_project)
    _json_flag(new_project)
    new_project.set_defaults(handler=create_project)

    update_project_parser = project_commands.add_parser(
        "update", parents=admin_options, help="change a project's name or limits; the rest stay as they are"
    )
    update_project_parser.add_argument("id", help="project id")
    update_project_parser.add_argument("--name", help="new display name")
    _project_limit_flags(update_project_parser, updating=True)
    _json_flag(update_project_parser)
    update_project_parser.set_defaults(handler=update_project, check=check_project_update)

    list_projects_parser = project_commands.add_parser("list", parents=admin_options, help="list projects")
    _json_flag(list_projects_parser)
    list_projects_parser.set_defaults(handler=list_projects)


def _project_limit_flags(parser: argparse.ArgumentParser, *, updating: bool = False) -> None:
    """The limits a project's keys share together; 0 means none (on update: removes the limit)."""
    none = "0 removes it" if updating else "default: none"
    parser.add_argument(
        "--requests-per-minute", "--rpm", dest="rpm", type=non_negative_int, metavar="N",
        help=f"requests per minute for all of the project's keys together ({none})",
    )  # fmt: skip
    parser.add_argument(
        "--tokens-per-minute", "--tpm", dest="tpm", type=non_negative_int, metavar="N",
        help=f"tokens per minute for all of the project's keys together ({none})",
    )  # fmt: skip
    parser.add_argument(
        "--budget-usd", type=non_negative_float, metavar="USD",
        help=f"spending cap in USD for all of the project's keys together ({none})",
    )  # fmt: skip
    parser.add_argument("--budget-period", choices=("total", "monthly"), help="how the cap resets (default total)")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def _print_secret(verb: str, created: CreatedKey) -> None:
    info = created["api_key"]
    print(f"{verb} key {created['id']} (name {info['name']!r}, project {info['project']!r}, {info['masked']})")
    print(f"Secret: {created['key']}")
    print(ONE_TIME_NOTICE)


def create_key(args: argparse.Namespace, client: AdminClient) -> None:
    created = client.create_key(
        name=args.name,
        project=args.project,
        models=args.models,
        plan=args.plan,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        burst=args.burst,
        budget_usd=args.budget_usd,
        budget_period=args.budget_period,
        expires_at=args.expires_at,
    )
    if args.json:
        print(format_json(created))
    else:
        _print_secret("Created", created)


def key_row(info: KeyInfo) -> tuple[str, ...]:
    models = ",".join(info.get("models") or []) or "*"
    return (
        info["id"],
        info["name"],
        info["project"],
        info["masked"],
        models,
        info.get("plan") or "-",
        "yes" if info.get("revoked") else "no",
    )


def list_keys(args: argparse.Namespace, client: AdminClient) -> None:
    keys = client.list_keys(project=args.project, include_revoked=args.all)
    if args.json:
        print(format_json({"keys": keys}))
    elif not keys:
        print("No keys." if args.all else "No keys (revoked keys are hidden; --all shows them).")
    else:
        print(format_table(KEY_COLUMNS, [key_row(k) for k in keys]))


def revoke_key(args: argparse.Namespace, client: AdminClient) -> None:
    info = client.revoke_key(args.id)
    if args.json:
        print(format_json(info))
    else:
        print(f"Revoked key {info['id']} (name {info['name']!r}, {info['masked']}); it stops working within a second.")


def rotate_key(args: argparse.Namespace, client: AdminClient) -> None:
    rotated = client.rotate_key(args.id)
    if args.json:
        print(format_json(rotated))
    else:
        _print_secret("Rotated", rotated)
        print("The old secret no longer works.")


def _limit(value: object) -> str:
    """A per-minute limit as listings show it: '-' for none (int64 arrives as a string in JSON)."""
    number = int(str(value or 0))
    return str(number) if number else "-"


def _budget(project: Project) -> str:
    budget = float(project.get("budget_usd") or 0)
    return f"{budget:g} {project.get('budget_period') or 'total'}" if budget else "-"


def describe_limits(project: Project) -> str:
    """One line: the project's shared limits."""
    return (
        f"requests/min {_limit(project.get('requests_per_minute'))}, "
        f"tokens/min {_limit(project.get('tokens_per_minute'))}, budget USD {_budget(project)}"
    )


def project_row(project: Project) -> tuple[str, ...]:
    return (
        project["id"],
        project["name"],
        _limit(project.get("requests_per_minute")),
        _limit(project.get("tokens_per_minute")),
        _budget(project),
        project.get("created_at", "-"),
    )


def create_project(args: argparse.Namespace, client: AdminClient) -> None:
    project = client.create_project(
        name=args.name,
        project_id=args.project_id,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        budget_usd=args.budget_usd,
        budget_period=args.budget_period,
    )
    if args.json:
        print(format_json({"project": project}))
    else:
        print(f"Created project {project['id']} (name {project['name']!r}; {describe_limits(project)})")


def check_project_update(args: argparse.Namespace) -> str | None:
    """A usage problem with `projects update`, or None."""
    if args.name is None and all(getattr(args, flag) is None for flag in PROJECT_LIMITS):
        return (
            "`interlock projects update` needs something to change: --name, --requests-per-minute, "
            "--tokens-per-minute, --budget-usd or --budget-period"
        )
    return None


def update_project(args: argparse.Namespace, client: AdminClient) -> None:
    project = client.update_project(
        args.id,
        name=args.name,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        budget_usd=args.budget_usd,
        budget_period=args.budget_period,
    )
    if args.json:
        print(format_json(project))
    else:
        print(f"Updated project {project['id']} (name {project['name']!r}; {describe_limits(project)})")


def list_projects(args: argparse.Namespace, client: AdminClient) -> None:
    projects = client.list_projects()
    if args.json:
        print(format_json({"projects": projects}))
    elif not projects:
        print("No projects.")
    else:
        print(format_table(PROJECT_COLUMNS, [project_row(p) for p in projects]))
