"""`longshort serve --export DIR [--protocol P] [--host H] [--port P]`: OpenAI-compatible HTTP on an exported bundle."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from longshort.commands.common import add_recipe_arguments
from longshort.commands.infer import PROTOCOL_NAMES
from longshort.errors import UserError


def add_bundle_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `serve` and `chat`: the bundle, the protocol, the recipe for engine and protocol settings."""
    p.add_argument("--export", required=True, metavar="DIR", help="A `longshort export` folder (manifest.json, role adapters).")
    p.add_argument("--protocol", choices=PROTOCOL_NAMES,
                   help="Protocol every question runs (default: the bundle's how_to_run.protocol, else protocol.name).")
    p.add_argument("--seed", type=int, help="Sampling seed (run.seed; each request's calls are seeded by it and the request id).")
    add_recipe_arguments(p, required=False)


def bundle_settings(args: argparse.Namespace) -> tuple[Any, str]:
    """The recipe `serve`/`chat` run with: --recipe, else the one the bundle's roles were trained with, else the
    defaults; plus overrides. With where it came from, for the start-up line."""
    from longshort.commands.common import finite
    from longshort.config import load_recipe
    from longshort.config.loader import MAX_INT
    from longshort.serve import bundle_recipe

    path = args.recipe or bundle_recipe(args.export)
    recipe = load_recipe(path, args.overrides)
    if args.seed is not None:
        recipe.run.seed = int(finite("--seed", args.seed, 0, MAX_INT))  # type: ignore[arg-type]
    return recipe, path or "defaults"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bundle_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1: this machine only).")
    p.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000; 0: any free port).")


def run(args: argparse.Namespace) -> int:
    from longshort.serve import make_server, open_service

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port: expected 0..65535, got {args.port}")
    recipe, settings = bundle_settings(args)
    service = open_service(args.export, recipe, args.protocol)
    try:
        server = make_server(service, args.host, args.port)
        host, port = server.server_address[:2]
        print(f"serving {service.model} ({args.export}; settings: {settings}; {recipe.engine.kind} engine) "
              f"on http://{host}:{port}/v1 (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        service.close()
    return 0
