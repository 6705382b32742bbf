"""`longshort serve` / `chat`: a real exported tiny bundle on a real HF engine behind a real HTTP server on port 0."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from longshort.cli import main
from longshort.config import load_recipe
from longshort.config.loader import dump_yaml
from longshort.serve import Service, make_server, open_service, reply

REPO = Path(__file__).resolve().parents[1]
# Small caps keep an episode under a second on the random tiny model (it never stops on its own).
OVERRIDES = ["engine.kind=hf", "engine.max_model_len=1024", "roles.long.max_tokens=8", "roles.short.max_tokens=8",
             "protocol.max_turns=4"]
SYSTEM = {"long": "You are the long role of the served bundle.", "short": "You are the short role of the served bundle."}
STOP = {"long": ["</think>"], "short": ["</rethink>", "</answer>"]}
PROBLEM = "What is 12 + 7?"
# what the roles' runs sampled with: the bundle records it and serve uses it (small caps keep the tests fast)
ROLE_SAMPLING = {"long": {"max_tokens": 8, "temperature": 0.3, "top_p": 0.9, "max_turns": 4},
                 "short": {"max_tokens": 6, "temperature": 0.5, "max_turns": 3}}


@pytest.fixture(scope="module")
def bundle(tiny_model, tiny_adapters, tmp_path_factory) -> Path:
    """`longshort export`'s bundle of the session's two LoRA roles, written and verified by the real Exporter."""
    from longshort.export import Exporter, RunInfo

    root = tmp_path_factory.mktemp("serve")
    runs = []
    for role, adapter in tiny_adapters.items():
        targets = json.loads((Path(adapter) / "adapter_config.json").read_text())["target_modules"]
        info = {"stage": "sft", "role": role, "mode": "lora", "base": tiny_model, "dtype": "float32",
                "final": str(Path(adapter).resolve()), "lora": {"r": 8, "alpha": 16, "target_modules": targets},
                "role_config": {"system_prompt": SYSTEM[role], "stop": STOP[role], **ROLE_SAMPLING[role]}}
        run = root / f"run_{role}"
        run.mkdir()
        # the run's resolved recipe, as `longshort sft` writes it: the export records it, serve and chat default to it
        (run / "config.yaml").write_text(dump_yaml(load_recipe(None, OVERRIDES)))
        runs.append(RunInfo(run, info))
    out = root / "export"
    Exporter(runs, out, vllm_check=False, log=lambda m: None).export()
    return out


@pytest.fixture(scope="module")
def served(bundle):
    """(server, service): `longshort serve`'s server on 127.0.0.1, port 0, serving in a thread."""
    service = open_service(bundle, load_recipe(None, OVERRIDES), "long_short")
    server = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, service
    server.shutdown()
    server.server_close()
    service.close()
    thread.join(10)
    assert not thread.is_alive()


def test_the_bundle_serves_the_roles_with_the_sampling_they_ran_with(served):
    _, service = served
    roles = service.recipe.roles
    assert (roles.long.max_tokens, roles.long.temperature, roles.long.top_p) == (8, 0.3, 0.9)
    assert (roles.short.max_tokens, roles.short.temperature) == (6, 0.5)
    assert service.recipe.protocol.max_turns == 4


def call(server, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request with http.client, the way any OpenAI client talks HTTP."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data is not None else {})
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


def chat(server, **fields) -> tuple[int, dict, bytes]:
    return call(server, "POST", "/v1/chat/completions",
                {"model": "longshort-long_short", "messages": [{"role": "user", "content": PROBLEM}], **fields})


def test_completion_is_the_episode_in_openai_shape(served, tiny_tokenizer):
    server, service = served
    status, headers, raw = chat(server, messages=[{"role": "system", "content": "ignored: the roles have their own"},
                                                  {"role": "user", "content": "an earlier question"},
                                                  {"role": "assistant", "content": "an earlier answer"},
                                                  {"role": "user", "content": [{"type": "text", "text": PROBLEM}]}],
                                temperature=0, max_tokens=3)
    assert status == 200 and headers["Content-Type"] == "application/json"
    body = json.loads(raw)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "longshort-long_short"
    status, _, raw = call(server, "POST", "/v1/chat/completions",  # `longshort` names whatever the server serves
                          {"model": "longshort", "messages": [{"role": "user", "content": PROBLEM}], "max_tokens": 3})
    assert status == 200 and json.loads(raw)["model"] == "longshort-long_short"
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    # The same question on the same warm engine, greedy: the episode the response reports.
    ep = service.solve(PROBLEM, max_tokens=3, temperature=0.0)
    assert ep.turns and all(t.output_tokens <= 3 for t in ep.turns)  # max_tokens caps every call
    assert (choice["message"]["content"], choice["finish_reason"]) == reply(ep)
    assert choice["finish_reason"] == ("stop" if ep.answer is not None else "length")
    u = body["usage"]
    assert (u["turns"], u["b_seq"], u["b_total"]) == (len(ep.turns), ep.b_seq, ep.b_total)
    assert (u["prompt_tokens"], u["completion_tokens"]) == (ep.tokens_read, ep.b_total)
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and 0 < u["b_seq"] <= u["b_total"] <= 3 * u["turns"]
    assert body["longshort"] == {"protocol": "long_short", "answer": ep.answer, "end": ep.meta["end"]}
    # The roles run with the bundle's system prompts (what they were trained with), not the recipe's defaults.
    roles = {t.role for t in ep.turns}
    assert roles == {"long", "short"}
    for role in roles:
        first = next(t for t in ep.turns if t.role == role)
        assert SYSTEM[role] in tiny_tokenizer.decode(first.prompt_ids)
    # Without the cap, the roles' own caps (8) apply: the request's max_tokens really changed the calls.
    assert max(t.output_tokens for t in service.solve(PROBLEM, temperature=0.0).turns) > 3


def test_stream_sends_the_answer_as_openai_chunks(served):
    server, service = served
    status, _, raw = chat(server, temperature=0)
    full = json.loads(raw)
    status, headers, raw = chat(server, temperature=0, stream=True, stream_options={"include_usage": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = raw.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]" and all(e.startswith("data: ") for e in events[:-1])
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    *_, last, tail = chunks
    assert last["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"] and last["choices"][0]["delta"] == {}
    assert tail["choices"] == [] and tail["usage"] == full["usage"]
    # While the protocol runs, each finished engine call is an empty-delta chunk saying which call it was: one per
    # protocol step of the same (greedy) episode, with the tokens that step generated.
    ep = service.solve(PROBLEM, temperature=0.0)
    steps = sorted({t.step for t in ep.turns})
    calls = [c["longshort"] for c in chunks if "longshort" in c]
    assert [c["call"] for c in calls] == list(range(1, len(steps) + 1)) and len(steps) > 1
    assert all(c["choices"][0]["delta"] == {} for c in chunks if "longshort" in c)
    assert [c["generated_tokens"] for c in calls] == [sum(t.output_tokens for t in ep.turns if t.step == k) for k in steps]
    assert [c["roles"] for c in calls] == [sorted({t.role for t in ep.turns if t.step == k}) for k in steps]
    status, _, raw = chat(server, temperature=0, stream=True)  # no include_usage: no usage chunk
    assert all(json.loads(e[6:])["choices"] for e in raw.decode().split("\n\n")[:-2])


def test_models_and_health(served):
    server, _ = served
    status, _, raw = call(server, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(raw)["data"]] == ["longshort-long_short"]
    status, _, raw = call(server, "GET", "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"


@pytest.mark.parametrize("method, path, body, status, says", [
    ("POST", "/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
    ("POST", "/v1/chat/completions", {"max_tokens": 4}, 400, "'messages'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, 400, "no user message"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, 400, "not valid text"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "max_tokens": "5"}, 400, "'max_tokens'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "max_tokens": 0}, 400, "'max_tokens'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "temperature": -1}, 400, "'temperature'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "stream": "yes"}, 400, "'stream'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "n": 2}, 400, "'n'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "model": "gpt-4"}, 404, "not served"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "protocol": "tot"}, 400, "unknown protocol"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}], "protocol": ["pdr"]}, 400,
     "unknown protocol"),
    ("POST", "/v1/chat/completions", b"", 400, "not valid JSON"),
    ("PUT", "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}]}, 405, "not allowed"),
    ("POST", "/v1/completions", {"prompt": "1+1"}, 404, "no such path"),
    ("GET", "/nowhere", None, 404, "no such path"),
    ("GET", "/v1/chat/completions", None, 405, "use POST"),
    ("POST", "/v1/models", {}, 405, "use GET"),
    ("DELETE", "/v1/models", None, 405, "not allowed"),
])
def test_bad_requests_get_a_json_error(served, method, path, body, status, says):
    server, _ = served
    got, headers, raw = call(server, method, path, body)
    error = json.loads(raw)["error"]
    assert got == status and headers["Content-Type"] == "application/json", raw
    assert says in error["message"] and error["type"] == "invalid_request_error"
    if status == 405:
        assert headers["Allow"]


def test_a_request_may_run_another_protocol_on_the_same_engine(served):
    server, service = served
    status, _, raw = chat(server, temperature=0, max_tokens=4, protocol="long_cot")
    body = json.loads(raw)
    assert status == 200 and body["longshort"]["protocol"] == "long_cot", raw
    ep = service.solve(PROBLEM, max_tokens=4, temperature=0.0, protocol="long_cot")
    assert ep.protocol == "long_cot" and len(ep.turns) == 1  # one call, not the served long_short's alternation
    assert body["usage"]["turns"] == 1 and body["usage"]["b_seq"] == body["usage"]["b_total"] == ep.b_total
    assert body["choices"][0]["message"]["content"] == reply(ep)[0]
    status, _, raw = chat(server, temperature=0, max_tokens=4)  # the next request without the field: the served one
    assert status == 200 and json.loads(raw)["longshort"]["protocol"] == "long_short"


def raw_request(server, data: bytes) -> tuple[int, dict]:
    """Status and JSON body of one hand-written HTTP request (what http.client will not send)."""
    with socket.create_connection(server.server_address[:2], timeout=60) as s:
        s.sendall(data)
        res = http.client.HTTPResponse(s)
        res.begin()
        return res.status, json.loads(res.read())


def test_a_body_without_length_or_over_the_limit_is_refused_unread(served):
    from longshort.serve import MAX_BODY

    server, _ = served
    status, body = raw_request(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and "Content-Length" in body["error"]["message"]
    status, body = raw_request(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n")
    assert status == 400 and "byte count" in body["error"]["message"]
    # A real client sending a whole oversized body gets the 413, not a broken pipe (it still sends as it is refused).
    for size in (MAX_BODY + 1, 4 * MAX_BODY):
        status, _, raw = call(server, "POST", "/v1/chat/completions", b"x" * size)
        assert status == 413 and "over the limit" in json.loads(raw)["error"]["message"]
    assert chat(server, temperature=0, max_tokens=2)[0] == 200  # and the server goes on


def test_a_client_that_stalls_mid_body_is_closed_after_the_read_timeout(served, monkeypatch, capfd):
    from longshort.serve import Handler

    server, _ = served
    monkeypatch.setattr(Handler, "timeout", 1)  # READ_TIMEOUT_S, shortened: a connection reads it when it opens
    with socket.create_connection(server.server_address[:2], timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"messa")
        assert s.recv(1) == b""  # the server closed the connection, answering nothing
    assert chat(server, temperature=0, max_tokens=2)[0] == 200
    err = capfd.readouterr().err
    assert "Request timed out" in err and "Traceback" not in err  # the stdlib's one line


def test_pdr_on_the_same_engine_and_a_setting_it_refuses(served):
    _, service = served
    pdr = make_server(Service(service.recipe, service.engine, "pdr"), "127.0.0.1", 0)  # the warm engine, another protocol
    thread = threading.Thread(target=pdr.serve_forever, daemon=True)
    thread.start()
    try:
        status, _, raw = call(pdr, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": PROBLEM}],
                                                                   "temperature": 0, "max_tokens": 4})
        assert status == 400 and "temperature" in json.loads(raw)["error"]["message"]  # greedy drafts: all the same
        status, _, raw = call(pdr, "POST", "/v1/chat/completions", {"model": "longshort-pdr", "temperature": 0.7,
                                                                   "messages": [{"role": "user", "content": PROBLEM}],
                                                                   "max_tokens": 4})
        u = json.loads(raw)["usage"]
        assert status == 200 and u["b_seq"] < u["b_total"] and u["turns"] > 3  # parallel drafts: off the critical path
    finally:
        pdr.shutdown()
        pdr.server_close()


def test_requests_at_once_share_the_engine_one_episode_at_a_time(served):
    server, _ = served
    got: list[tuple[int, dict, bytes]] = []
    threads = [threading.Thread(target=lambda: got.append(chat(server, temperature=0))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [g[0] for g in got] == [200] * 3
    bodies = [json.loads(g[2]) for g in got]
    assert len({json.dumps([b["choices"], b["usage"]]) for b in bodies}) == 1  # greedy: the same episode each time


def test_a_client_that_goes_away_does_not_stop_the_server(served, capfd):
    server, _ = served
    host, port = server.server_address[:2]
    good = json.dumps({"messages": [{"role": "user", "content": PROBLEM}]}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    for raw in [head.format(len(good)).encode() + good[:10],  # closes halfway through the body
                head.format(len(good)).encode() + good,  # closes before reading the answer of a whole episode
                b"POST /v1/chat/comp"]:  # closes halfway through the request line
        with socket.create_connection((host, port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset
            s.sendall(raw)
    status, _, body = chat(server, temperature=0)
    assert status == 200 and json.loads(body)["usage"]["turns"] >= 1
    status, _, _ = call(server, "GET", "/health")
    assert status == 200
    err = capfd.readouterr().err
    assert "client disconnected" in err and "Traceback" not in err  # logged in one line, never raised


def test_chat_reads_questions_until_end_of_input(bundle, served, monkeypatch, capsys):
    _, service = served
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{PROBLEM}\n\n   \nWhat is 3 + 4?"))  # no newline at EOF
    assert main(["chat", "--export", str(bundle)]) == 0  # the recipe and protocol the bundle records
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("[long_short: ")]) == 2  # blanks are no questions
    ep = service.solve(PROBLEM, request_id="chat-1")  # the chat's first question, on the server's engine
    assert out.startswith(f"{reply(ep)[0]}\n[long_short: {len(ep.turns)} turns, B_seq {ep.b_seq}, B_total {ep.b_total}, "
                          f"read {ep.tokens_read}, end {ep.meta['end']}, ")


def test_chat_with_piped_stdin_stops_at_quit(bundle):
    cli = REPO / ".venv" / "bin" / "longshort"
    res = subprocess.run([str(cli), "chat", "--export", str(bundle), "--protocol", "long_short", *OVERRIDES],
                         input=f"{PROBLEM}\n/quit\nnever asked\n", capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert len([line for line in res.stdout.splitlines() if line.startswith("[long_short: ")]) == 1
    assert "> " not in res.stdout  # no prompt when stdin is not a terminal


def test_bad_bundles_and_flags_exit_2(bundle, tmp_path, capsys):
    assert main(["serve", "--export", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["serve", "--export", str(bundle), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["roles"]["long"]["recipe"]["path"].endswith("run_long/config.yaml")
    recipe = dict(manifest["roles"]["long"]["recipe"], sha256="0" * 64)
    for name, changed, key in [("recipe", {"roles": {**manifest["roles"], "long": {**manifest["roles"]["long"], "recipe": recipe}}},
                                "roles.long.recipe"),
                               ("base", {"base": {**manifest["base"], "sha256": "0" * 64}}, "base.sha256")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({**manifest, **changed}))
        assert main(["chat", "--export", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0] and "changed since the export" in err[0], err
