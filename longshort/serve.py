"""Serve an exported bundle over OpenAI-compatible HTTP (`longshort serve`) and in a terminal (`longshort chat`).

`open_service(export_dir, recipe, protocol)` points the recipe at a `longshort export` folder (the base it was
verified on, each role's adapter, system prompt and stop strings) and starts ONE engine serving both roles; every
question is one `run_protocol` episode on that warm engine. `make_server(service, host, port)` wraps it in a stdlib
`ThreadingHTTPServer`: POST /v1/chat/completions (plain or `stream: true`), GET /v1/models, GET /health.
Requests are parsed and answered on their own threads; the engine runs one episode at a time (`Service.lock`),
as neither engine may be called from two threads at once. docs/serve.md.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from longshort.errors import UserError
from longshort.types import ROLES, Episode

MAX_BODY = 1 << 20  # bytes of one request body: a chat request is text, so 1 MiB is generous
READ_TIMEOUT_S = 60  # a client that stops sending mid-request frees its thread after this long
DRAIN_MAX = 32 << 20  # bytes of an oversized body read and dropped so that its sender reads the 413, not a reset
DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


# -- the bundle and the warm engine ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: unreadable or not JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _manifest(export_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    manifest_file = Path(export_dir) / "manifest.json"
    if not manifest_file.is_file():
        raise UserError(f"--export {export_dir}: no manifest.json (not a `longshort export` folder)")
    manifest = _read_json(manifest_file)
    if manifest.get("format") != "longshort-export/1":
        raise UserError(f"{manifest_file}: key 'format' is {manifest.get('format')!r}, expected 'longshort-export/1'")
    roles = manifest.get("roles")
    if not isinstance(roles, dict) or not roles or set(roles) - set(ROLES) or not all(isinstance(e, dict) for e in roles.values()):
        raise UserError(f"{manifest_file}: key 'roles' must map some of {', '.join(ROLES)} to their exports")
    return manifest_file, manifest


def bundle_recipe(export_dir: str | Path) -> str | None:
    """The recipe a bundle's roles were trained with (`roles.<role>.recipe`: the run's resolved `config.yaml`, the
    long role's first), the default settings of `serve`/`chat`; None when the export recorded none or the run
    folder is gone. One that changed since the export is refused: it no longer says how the roles were run."""
    from longshort.run.checkpoint import sha256_file

    manifest_file, manifest = _manifest(export_dir)
    for role in sorted(manifest["roles"], key=ROLES.index):
        record = manifest["roles"][role].get("recipe")
        if not isinstance(record, dict) or not Path(str(record.get("path"))).is_file():
            continue
        if sha256_file(Path(record["path"])) != record.get("sha256"):
            raise UserError(f"{manifest_file}: key 'roles.{role}.recipe': {record['path']} changed since the export "
                            "(sha256 differs); pass --recipe to choose the settings")
        return str(record["path"])
    return None


def bundle_protocol(export_dir: str | Path) -> str | None:
    """The protocol the export says runs the bundle (`how_to_run.protocol`: long_short for a pair, long_cot alone)."""
    how = _manifest(export_dir)[1].get("how_to_run")
    return how.get("protocol") if isinstance(how, dict) and isinstance(how.get("protocol"), str) else None


def load_bundle(export_dir: str | Path, recipe: Any) -> None:
    """Point `recipe` at the `longshort export` folder: `model.base` and `roles.<role>.adapter`, `system_prompt`
    and `stop` from the bundle (the settings the roles were trained with win over the recipe's). LoRA roles share
    the base the export verified them on, which must still hash the same; a full-SFT role is its own base, so
    it can only be served alone."""
    from longshort.export import tree_hash

    root = Path(export_dir)
    manifest_file, manifest = _manifest(root)
    roles = manifest["roles"]
    modes = {role: entry.get("mode") for role, entry in roles.items()}
    if any(m not in ("lora", "full") for m in modes.values()):
        raise UserError(f"{manifest_file}: key 'roles.<role>.mode' must be lora or full, got {modes}")
    full = [role for role, m in modes.items() if m == "full"]
    if full and len(roles) > 1:
        raise UserError(f"{manifest_file}: role {full[0]} is a full-SFT model and cannot share one engine with "
                        f"{', '.join(r for r in roles if r != full[0])}; export it on its own")
    if full:
        recipe.model.base = str(root / full[0] / "merged")
    else:
        base = manifest.get("base") if isinstance(manifest.get("base"), dict) else {}
        path = Path(str(base.get("path", "")))
        if not (path / "config.json").is_file():
            raise UserError(f"{manifest_file}: key 'base.path': {path} is missing (the base the adapters were verified on)")
        if tree_hash(path) != base.get("sha256"):
            raise UserError(f"{manifest_file}: key 'base.sha256': the base at {path} changed since the export "
                            "(content hash differs); the adapters were verified on another model")
        recipe.model.base = str(path)
    turns: list[int] = []
    for role in ROLES:
        rc = getattr(recipe.roles, role)
        rc.adapter = None  # only the bundle's roles are served: a recipe adapter would be a second source
        if role not in roles:
            continue
        where = root / role / ("merged" if role in full else "adapter")
        settings = _read_json(where / "longshort_role.json")
        rc.adapter = None if role in full else str(where)
        rc.system_prompt = str(settings.get("system_prompt") or "")
        rc.stop = [str(s) for s in settings.get("stop") or []]
        # the sampling the role was trained and measured with (a tiny role breaks its format far from it); a
        # request's own max_tokens / temperature still win
        for key in ("max_tokens", "temperature", "top_p"):
            if settings.get(key) is not None:
                setattr(rc, key, type(getattr(rc, key))(settings[key]))
        if settings.get("max_turns") is not None:  # the protocol's turn cap the pair ran with (RL exports record it)
            turns.append(int(settings["max_turns"]))
    if turns:
        recipe.protocol.max_turns = max(turns)


class Service:
    """One warm engine on an exported bundle; `solve` runs one protocol episode on it, one at a time."""

    def __init__(self, recipe: Any, engine: Any, protocol: str):
        self.recipe, self.engine, self.protocol = recipe, engine, protocol
        self.model = f"longshort-{protocol}"
        self.lock = threading.Lock()

    def solve(self, problem: str, max_tokens: int | None = None, temperature: float | None = None,
              request_id: str = "chat", protocol: str | None = None,
              on_call: Callable[[list[Any], list[list[Any]]], None] | None = None) -> Episode:
        """One episode of `protocol` (default: the served one) on `problem`. `max_tokens` caps every generation
        call (each turn, draft, refinement), `temperature` sets every call's sampling; the id seeds the sampling
        (protocols/). Any protocol runs on the one engine: it serves both roles and the base. `on_call(requests,
        completions)` hears of each batched engine call as it finishes (a stream's progress events)."""
        from longshort.protocols import run_protocol

        recipe = copy.deepcopy(self.recipe)  # per request: concurrent requests may ask for different settings
        calls = [getattr(recipe.roles, r) for r in ROLES] + [recipe.protocol]
        if max_tokens is not None:
            for c in calls:
                c.max_tokens = min(c.max_tokens, max_tokens)
        if temperature is not None:
            for c in calls:
                c.temperature = temperature
            recipe.protocol.sr_temperature = recipe.protocol.pdr_temperature = temperature
        engine = self.engine if on_call is None else _Reporting(self.engine, on_call)
        with self.lock:
            (ep,) = run_protocol(protocol or self.protocol, engine, [{"id": request_id, "problem": problem, "answer": ""}], recipe)
        ep.correct = None  # no gold: nothing was graded
        return ep

    def close(self) -> None:
        self.engine.close()


class _Reporting:
    """The engine, telling `on_call` of every batched call it finished (what a streamed request reports while its
    protocol runs); everything else is the engine's own."""

    def __init__(self, engine: Any, on_call: Callable[[list[Any], list[list[Any]]], None]) -> None:
        self._engine, self._on_call = engine, on_call

    def generate(self, requests: list[Any]) -> list[list[Any]]:
        out = self._engine.generate(requests)
        self._on_call(requests, out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def open_service(export_dir: str | Path, recipe: Any, protocol: str | None = None) -> Service:
    """The bundle loaded into `recipe` and its engine started (`models.resolve_served`, `engines.start_engine`).
    The protocol: `protocol`, else the bundle's (`bundle_protocol`), else `protocol.name`."""
    from longshort.engines import start_engine
    from longshort.models import resolve_served
    from longshort.protocols import PROTOCOLS

    recipe.protocol.name = protocol or bundle_protocol(export_dir) or recipe.protocol.name
    if recipe.protocol.name not in PROTOCOLS:
        raise UserError(f"--protocol: unknown protocol {recipe.protocol.name!r} (choose from {', '.join(PROTOCOLS)})")
    load_bundle(export_dir, recipe)
    model, adapters = resolve_served(recipe)
    return Service(recipe, start_engine(recipe, model, adapters, log_level="ERROR"), recipe.protocol.name)


# -- what a question's answer is ------------------------------------------------------------------------------


def reply(ep: Episode) -> tuple[str, str]:
    """(assistant content, OpenAI finish_reason): the final answer and "stop"; an episode that ended without one
    (malformed, out of turns, context full, cut at its cap) gives its last turn's text and "length"."""
    if ep.answer is not None:
        return ep.answer, "stop"
    return (ep.turns[-1].text if ep.turns else ""), "length"


def usage(ep: Episode) -> dict[str, int]:
    """OpenAI's usage numbers, from the episode's budgets: prompt = every context token the engine read over all
    calls (`tokens_read`), completion = every generated token (`b_total`), plus the longshort budgets."""
    return {"prompt_tokens": ep.tokens_read, "completion_tokens": ep.b_total, "total_tokens": ep.tokens_read + ep.b_total,
            "turns": len(ep.turns), "b_seq": ep.b_seq, "b_total": ep.b_total}


def summary_line(ep: Episode) -> str:
    """`longshort chat`'s one line of usage per question."""
    return (f"[{ep.protocol}: {len(ep.turns)} turns, B_seq {ep.b_seq}, B_total {ep.b_total}, read {ep.tokens_read}, "
            f"end {ep.meta.get('end')}, {ep.latency_s:.2f}s]")


# -- the OpenAI request and response shapes --------------------------------------------------------------------


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, an OpenAI error `message`, the offending `param`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    problem: str
    max_tokens: int | None
    temperature: float | None
    stream: bool
    include_usage: bool
    protocol: str | None = None


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of content parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [p.get("text") for p in content if p.get("type") == "text"]
        if all(isinstance(t, str) for t in parts):
            return "".join(parts)
    raise RequestError(400, f"{where}: expected a string or a list of text parts", where)


def _number(body: dict[str, Any], key: str, low: float, high: float, integer: bool) -> Any:
    value = body.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise RequestError(400, f"'{key}': expected {what} in [{low:g}, {high:g}], got {json.dumps(value)}", key)
    return value


def parse_chat(raw: bytes, model: str) -> ChatRequest:
    """A POST /v1/chat/completions body checked field by field; the problem is the last user message."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    if body.get("model") is not None and body["model"] not in (model, "longshort"):  # `longshort`: whatever is served
        raise RequestError(404, f"model {body['model']!r} is not served here (GET /v1/models: {model})", "model", "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages': required, a non-empty list of {role, content} objects", "messages")
    problem = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(400, f"messages[{i}]: expected an object with a string 'role'", f"messages[{i}]")
        if m["role"] == "user":
            problem = _text(m.get("content"), f"messages[{i}].content")
    if problem is None or not problem.strip():
        raise RequestError(400, "'messages': no user message with text (the last one is the problem)", "messages")
    try:
        problem.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape is valid JSON but no tokenizer can encode it
        raise RequestError(400, f"'messages': the problem is not valid text ({e.reason} at {e.start})", "messages") from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"'stream': expected true or false, got {json.dumps(stream)}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError(400, "'stream_options': expected {\"include_usage\": true|false}", "stream_options")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise RequestError(400, "'n': only 1 is supported (one episode per request)", "n")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise RequestError(400, "give 'max_tokens' or 'max_completion_tokens', not both", "max_tokens")
    cap = _number(body, "max_tokens", 1, 1 << 31, True) or _number(body, "max_completion_tokens", 1, 1 << 31, True)
    # `protocol`, a longshort extension: another protocol than the served one for this request, on the same engine.
    from longshort.protocols import PROTOCOLS

    protocol = body.get("protocol")
    if protocol is not None and (not isinstance(protocol, str) or protocol not in PROTOCOLS):  # a list is unhashable
        raise RequestError(400, f"'protocol': unknown protocol {json.dumps(protocol)} (choose from {', '.join(PROTOCOLS)})",
                           "protocol")
    return ChatRequest(problem, cap, _number(body, "temperature", 0, 2, False), stream, options.get("include_usage", False),
                       protocol)


def completion(ep: Episode, request_id: str, model: str, created: int) -> dict[str, Any]:
    content, finish = reply(ep)
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": usage(ep), "longshort": {"protocol": ep.protocol, "answer": ep.answer, "end": ep.meta.get("end")}}


def chunk(request_id: str, model: str, created: int, delta: dict[str, str], reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}], **extra}


def progress(call: int, requests: list[Any], completions: list[list[Any]]) -> dict[str, Any]:
    """What a stream reports of one finished engine call while the protocol runs (an empty delta: OpenAI clients
    read on; the `longshort` field says which call, of which roles, and how many tokens it generated)."""
    return {"call": call, "roles": sorted({str(r.role) for r in requests}),
            "generated_tokens": sum(len(c.token_ids) for row in completions for c in row)}


def chunks(ep: Episode, request_id: str, model: str, created: int, include_usage: bool) -> Iterator[dict[str, Any]]:
    """OpenAI's chunks after the role chunk, for the finished episode: the content word by word, the finish reason,
    and (with `stream_options.include_usage`) a last chunk with no choices and the usage."""
    content, finish = reply(ep)
    for piece in re.findall(r"\s*\S+|\s+$", content):
        yield chunk(request_id, model, created, {"content": piece})
    yield chunk(request_id, model, created, {}, finish)
    if include_usage:
        yield {**chunk(request_id, model, created, {}), "choices": [], "usage": usage(ep)}


# -- HTTP ------------------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """One connection's requests. The service is the server's (`make_server`); errors answer in OpenAI's shape."""

    server: Server
    server_version = "longshort"
    timeout = READ_TIMEOUT_S

    def handle(self) -> None:
        try:
            super().handle()
        except DISCONNECTED as e:  # the client went away mid-request or mid-answer: its loss, not the server's
            self.log_message("client disconnected: %s", type(e).__name__)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._json(200, {"status": "ok", "model": self.server.service.model})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.server.service.model, "object": "model",
                                                         "created": self.server.started, "owned_by": "longshort"}]})
        elif path == "/v1/chat/completions":
            self._error(RequestError(405, "use POST for /v1/chat/completions"), allow="POST")
        else:
            self._error(RequestError(404, f"no such path: {self.path}"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/health", "/v1/models"):
            return self._error(RequestError(405, f"use GET for {path}"), allow="GET")
        if path != "/v1/chat/completions":
            return self._error(RequestError(404, f"no such path: {self.path}"))
        try:  # reading the body may raise a disconnect (`handle` logs it) or a timeout (the stdlib's "Request timed out")
            request = parse_chat(self._body(), self.server.service.model)
        except RequestError as e:
            return self._error(e)
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created, model = int(time.time()), self.server.service.model
        calls: list[int] = []

        def on_call(requests: list[Any], completions: list[list[Any]]) -> None:
            # A stream opens at the first finished engine call (a refusal before it still answers 4xx), then reports
            # each call as it ends: a long PDR or Long⊗Short episode shows progress, and no proxy times it out.
            if not calls:
                self._open_stream(chunk(request_id, model, created, {"role": "assistant", "content": ""}))
            calls.append(len(calls) + 1)
            self._event(chunk(request_id, model, created, {}, longshort=progress(len(calls), requests, completions)))

        try:
            ep = self.server.service.solve(request.problem, request.max_tokens, request.temperature, request_id,
                                           request.protocol, on_call if request.stream else None)
        except DISCONNECTED:
            raise
        except Exception as e:  # noqa: BLE001 - one failed episode answers 4xx/5xx; the server keeps serving
            refused = isinstance(e, UserError)  # settings the protocol refuses (PDR greedy with parallel drafts)
            if not refused:
                self.log_error("episode failed: %s: %s", type(e).__name__, e)
            err = RequestError(400, str(e)) if refused else RequestError(500, f"the episode failed: {type(e).__name__}: {e}")
            if not calls:
                return self._error(err)
            self._event(err.body())  # the stream is open: the error is its last event, as OpenAI's streams do
            return self._done()
        if not request.stream:
            return self._json(200, completion(ep, request_id, model, created))
        if not calls:  # an episode without an engine call (none happen today; the stream still opens)
            self._open_stream(chunk(request_id, model, created, {"role": "assistant", "content": ""}))
        for c in chunks(ep, request_id, model, created, request.include_usage):
            self._event(c)
        self._done()

    def _open_stream(self, first: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self._event(first)

    def _event(self, body: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n")
        self.wfile.flush()

    def _done(self) -> None:
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _method_not_allowed(self) -> None:
        self._error(RequestError(405, f"method {self.command} is not allowed (GET /v1/models, GET /health, "
                                      "POST /v1/chat/completions)"), allow="GET, POST")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _method_not_allowed

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "a Content-Length header is required")
        if not length.isdigit():
            raise RequestError(400, f"Content-Length {length!r} is not a byte count")
        if int(length) > MAX_BODY:
            # A client still sending a body the server closes on gets a reset and never reads the answer: drop it first.
            left = min(int(length), DRAIN_MAX)
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)
            raise RequestError(413, f"request body of {length} bytes is over the limit of {MAX_BODY}")
        raw = self.rfile.read(int(length))
        if len(raw) < int(length):
            raise RequestError(400, f"request body ended after {len(raw)} of {length} bytes")
        return raw

    def _json(self, status: int, body: dict[str, Any], allow: str | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, e: RequestError, allow: str | None = None) -> None:
        self._json(e.status, e.body(), allow)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"serve: {self.address_string()} {format % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client's thread never keeps the process alive at shutdown

    def __init__(self, service: Service, host: str, port: int):
        self.service, self.started = service, int(time.time())
        super().__init__((host, port), Handler)


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """The HTTP server on `host:port` (0: any free port, read back from `server.server_address`); not yet serving."""
    try:
        return Server(service, host, port)
    except OSError as e:
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror or e})") from None
