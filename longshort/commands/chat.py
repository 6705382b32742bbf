"""`longshort chat --export DIR [--protocol P]`: ask an exported bundle questions from the terminal (or a pipe)."""

from __future__ import annotations

import argparse
import sys

from longshort.commands.serve import add_bundle_arguments, bundle_settings
from longshort.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bundle_arguments(p)


def run(args: argparse.Namespace) -> int:
    from longshort.commands.common import text_arg
    from longshort.serve import open_service, reply, summary_line

    recipe, settings = bundle_settings(args)
    service = open_service(args.export, recipe, args.protocol)
    if hasattr(sys.stdin, "reconfigure"):  # undecodable input bytes become U+FFFD, not an exception that ends the chat
        sys.stdin.reconfigure(errors="replace")
    interactive = sys.stdin.isatty()  # a prompt only for a person; piped questions give clean output
    print(f"chat: {service.model} on {args.export} (settings: {settings}); one question per line, /quit or end of input stops",
          file=sys.stderr, flush=True)
    asked = 0
    try:
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line or line.strip() == "/quit":
                break
            if not line.strip():
                continue
            asked += 1
            try:
                ep = service.solve(text_arg("question", line.strip()), request_id=f"chat-{asked}")
            except UserError as e:  # one bad question does not end the session
                print(f"chat: error: {e}", file=sys.stderr, flush=True)
                continue
            print(reply(ep)[0])
            print(summary_line(ep), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    return 0
