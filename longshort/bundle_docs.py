"""What an exported bundle says about itself: the manifest's `how_to_run` (protocol, folders, stop strings,
engine settings, the serve command and a plain-transformers snippet) and each role's model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longshort.types import ROLES


PAIR_SNIPPET = '''\
# One Long-Short episode with plain transformers: each role is its merged model; its chat template holds the
# role's system prompt, its generation_config.json the role's sampling settings and stop strings.
from transformers import AutoModelForCausalLM, AutoTokenizer

DIR = __DIR__
roles = {r: (AutoTokenizer.from_pretrained(f"{DIR}/{r}/merged"), AutoModelForCausalLM.from_pretrained(f"{DIR}/{r}/merged"))
         for r in ("long", "short")}
problem, turns = "What is 12 + 7?", []
for _ in range(4):  # long thinks, short answers (</answer>) or hands back (</rethink>)
    for role in ("long", "short"):
        tok, model = roles[role]
        msgs = [{"role": "user", "content": problem}]
        msgs += [{"role": "assistant" if r == role else "user", "content": t} for r, t in turns]
        ids = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                  return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, tokenizer=tok)  # tokenizer: for stop strings that are not one token
        turns.append((role, tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))
    if turns[-1][1].rstrip().endswith("</answer>"):
        break
print(turns[-1][1])
'''
ONE_SNIPPET = '''\
# The exported role with plain transformers: the chat template holds its system prompt, generation_config.json
# its sampling settings and stop strings.
from transformers import AutoModelForCausalLM, AutoTokenizer

DIR = __DIR__
tok = AutoTokenizer.from_pretrained(f"{DIR}/__ROLE__/merged")
model = AutoModelForCausalLM.from_pretrained(f"{DIR}/__ROLE__/merged")
ids = tok(tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], tokenize=False, add_generation_prompt=True),
          return_tensors="pt", add_special_tokens=False).input_ids
print(tok.decode(model.generate(ids, tokenizer=tok)[0, ids.shape[1]:], skip_special_tokens=True))
'''


def how_to_run(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """The manifest's `how_to_run`: the protocol, each role's folders and stop strings, engine settings, the command
    that serves the bundle and a Python snippet that runs it with plain transformers."""
    roles = manifest["roles"]
    pair = set(ROLES) <= set(roles)
    ranks = [e["adapter"]["r"] for e in roles.values() if "adapter" in e]
    snippet = PAIR_SNIPPET if pair else ONE_SNIPPET.replace("__ROLE__", next(iter(roles)))
    return {
        "protocol": "long_short" if pair else "long_cot",
        "roles": {r: {"adapter": e["adapter"]["path"] if "adapter" in e else None, "merged": e["merged"]["path"],
                      "card": f"{r}/README.md", "stop": e["stop"]} for r, e in roles.items()},
        # one base with both adapters hot-swapped (vLLM LoRA, or transformers + peft), or each merged model alone
        "engine": {"kinds": ["vllm", "hf"], "base": manifest["base"]["name"], "dtype": manifest["base"]["dtype"],
                   "enable_lora": bool(ranks), "max_lora_rank": max(ranks, default=None), "max_loras": len(ranks)},
        "command": f"longshort serve --export {out}",
        "python": snippet.replace("__DIR__", json.dumps(str(out))),
    }


def _fmt(x: Any) -> str:
    return "not measured" if x is None else format(x, ".4g") if isinstance(x, float) else str(x)


def _change(m: dict[str, Any], a: str, b: str) -> str:
    return "not measured" if m.get(b) is None else (f"{_fmt(m.get(a))} → {_fmt(m[b])}" if m.get(a) is not None else _fmt(m[b]))


def model_card(role: str, manifest: dict[str, Any]) -> str:
    """`<role>/README.md`: Hub front matter, then base, data, recipe, what the run measured and how to run it."""
    e, base, how = manifest["roles"][role], manifest["base"], manifest["how_to_run"]
    m, data, recipe, rl = e.get("metrics") or {}, e["data"], e["recipe"], e["stage"] == "rl"
    tags = ["longshort", "long-short", "reasoning", f"{role}-thought", e["stage"]] + (["lora"] if "adapter" in e else [])
    front = ["---", f"base_model: {json.dumps(base['name'])}", f"library_name: {'peft' if 'adapter' in e else 'transformers'}",
             "pipeline_tag: text-generation", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    # Every row, "not measured" where the run has no such number (SFT has no reward, RL no cross-entropy loss).
    measured = [("SFT loss (first → final)", _change(m, "first_loss", "final_loss")),
                ("SFT eval loss (first → final)", _change(m, "first_eval_loss", "eval_loss")),
                ("SFT tokens trained on", _fmt(m.get("tokens"))),
                ("RL policy-gradient loss (last step)", _fmt(m.get("final_pg_loss"))),
                (f"RL reward of the {role} role (first → last step)", _change(m, "first_reward", "final_reward")),
                ("RL accuracy of the pair on the step's problems (first → last step)", _change(m, "first_accuracy", "final_accuracy")),
                (f"RL tokens per episode of the {role} role (last step)", _fmt(m.get("role_tokens"))),
                ("RL tokens per episode, both roles (last step)", _fmt(m.get("episode_tokens"))),
                ("RL KL to the reference policy: the start adapter, or the base (last step)", _fmt(m.get("final_kl")))]
    where = (data.get("path") or "synthetic task " + json.dumps(data.get("synthetic")))
    lines = front + [
        f"# longshort `{role}` role ({e['mode']}, {'RL' if rl else 'SFT'})", "",
        f"The {role}-thought role of a Long⊗Short pair (two roles on one base take turns on a problem: long thinks in "
        "`<think> … </think>`, short answers `<answer> … </answer>` or hands back `<answer> … </rethink>`), exported and "
        "verified by `longshort export`.", "",
        "## Base", "",
        f"- `{base['name']}`, {base['dtype']}; content sha256 `{base['sha256']}` (every file of the base directory)", "",
        "## Data", "",
        f"- {data['kind']}: `{where}`, {_fmt(data.get('rows'))} rows, sha256 `{_fmt(data.get('sha256'))}`",
    ]
    if e.get("start_adapter"):
        lines.append(f"- RL started from the adapter `{e['start_adapter']}`")
    lines += ["", "## Recipe", "",
              (f"- `{recipe['path']}` (the resolved recipe of the run), sha256 `{recipe['sha256']}`" if recipe else "- not recorded"),
              f"- steps: {_fmt(e.get('steps'))}", "",
              "## Measured by the run", "", "| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in measured]
    v = e["verify"]
    lines += ["", f"Export check: merged == base + adapter on {v['probes']} probes (max |Δlogit| {v['merged_max_abs_logit_diff']:.2e}); "
              f"vLLM: {'loaded and generated' if isinstance(v.get('vllm'), dict) else 'not checked'}.", "",
              "## How to load", "",
              f"- Merged model (plain transformers or vLLM): `{e['merged']['path']}/`; its chat template adds the role's "
              f"system prompt when the messages have none, and `generation_config.json` stops at {', '.join(f'`{s}`' for s in e['stop']) or 'end of turn'}."]
    if "adapter" in e:
        lines += [f"- Adapter (PEFT, r={e['adapter']['r']}, alpha={e['adapter']['lora_alpha']}): "
                  f"`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), \"{e['adapter']['path']}\")`, where BASE "
                  f"is `{base['name']}` (check it against the sha256 above)."]
    lines += ["", "## How to run the pair" if how["protocol"] == "long_short" else "## How to run it", "",
              f"`{how['command']}` serves the bundle ({how['protocol']}), or in Python:", "", "```python", how["python"].rstrip(), "```", ""]
    return "\n".join(lines)
