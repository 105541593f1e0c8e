"""`interlock models`: what the gateway serves to an ordinary API key.

`GET /v1/models` answers for the presented key, so this needs an ordinary key
(--api-key or INTERLOCK_API_KEY); the admin key is not one.
"""

from __future__ import annotations

import argparse

from services.cli.admin_client import AdminClient, ModelInfo, format_json, format_table

MODEL_TYPES = ("chat", "completion", "embedding", "profile")
MODEL_COLUMNS = ("ID", "TYPE", "PROVIDER", "CONTEXT", "PRICE IN/OUT PER 1M (USD)", "AVAILABLE")


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], api_options: list[argparse.ArgumentParser]
) -> None:
    """Register `models`; api_options carry --url and --api-key."""
    models = commands.add_parser("models", parents=api_options, help="list the models a key may use")
    models.add_argument("--provider", help="only models served by this provider")
    models.add_argument("--type", dest="model_type", choices=MODEL_TYPES, help="only models of this type")
    models.add_argument("--json", action="store_true", help="print the raw JSON answer")
    models.set_defaults(handler=list_models)


def _price(value: float) -> str:
    return f"{value:g}"


def model_row(model: ModelInfo) -> tuple[str, ...]:
    context = model.get("context_window")
    pricing = model.get("pricing")
    # Embeddings are billed on input only.
    output = "-" if model.get("type") == "embedding" else _price(pricing["output"]) if pricing else "-"
    price = f"{_price(pricing['input'])} / {output}" if pricing else "-"
    return (
        model["id"],
        model.get("type", "-"),
        model.get("provider") or "-",
        str(context) if context else "-",
        price,
        "yes" if model.get("available") else "no",
    )


def list_models(args: argparse.Namespace, client: AdminClient) -> None:
    models = client.list_models(provider=args.provider, type=args.model_type)
    if args.json:
        print(format_json({"object": "list", "data": models}))
    elif not models:
        print("No models match.")
    else:
        print(format_table(MODEL_COLUMNS, [model_row(m) for m in models]))
