"""RL through the PDR operator (docs/rl.md, "RL through an operator"): which tokens of each call kind are trained and
with which advantage, the learner's per-turn sampling temperature, CISPO against PPO-clip, the NLL term on correct
rollouts, the operator mix, the refusals, and a short `longshort rl` run that learns through the operator.

Episodes come from the real tiny model on the real HF engine; the loss is checked on hand tensors.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from longshort.config import load_recipe
from longshort.rl.batches import build_batches, nll_normalisers
from longshort.rl.loss import policy_loss
from longshort.rl.operator import call_kind, route

PROBLEMS = [{"id": "q", "problem": "A box has 3 coins. Then 4 more coins are added. How many coins are in the box?", "answer": "7"}]


def pdr_recipe(*overrides: str):
    return load_recipe(None, ["protocol.name=pdr", "protocol.pdr_schedule=[2,1]", "protocol.pdr_distill=shared_topk",
                              "protocol.pdr_k=1", "protocol.pdr_kappa=32", "protocol.max_tokens=12",
                              "protocol.pdr_temperature=0.5", "roles.long.temperature=1.0", "engine.max_model_len=1024",
                              *overrides])


@pytest.fixture(scope="module")
def rollouts(hf_engine):
    """A real PDR episode (2 drafts, a judge call, a refine call reading the workspace) and a real long_cot episode,
    each turn carrying the temperature it was sampled at (`calls.execute` records it)."""
    from longshort.protocols import run_protocol

    r = pdr_recipe()
    (pdr,) = run_protocol("pdr", hf_engine, PROBLEMS, r, seed=3)
    (cot,) = run_protocol("long_cot", hf_engine, PROBLEMS, r, seed=3)
    for ep, adv, correct in ((pdr, 0.75, True), (cot, -0.5, False)):
        # each call records what it sampled at: the protocol's temperature for the single-solver protocols
        assert [t.temperature for t in ep.turns] == [r.protocol.temperature_of(ep.protocol)] * len(ep.turns)
        ep.advantages, ep.correct = {"long": adv}, correct
    return r, pdr, cot


def test_each_call_kind_carries_the_right_mask_and_advantage(rollouts, tiny_tokenizer):
    r, pdr, cot = rollouts
    kinds = [call_kind(pdr, i) for i in range(len(pdr.turns))]
    assert kinds == ["draft", "draft", "judge", "refine"]
    refine = pdr.turns[3]
    assert "Notes distilled from earlier attempts" in tiny_tokenizer.decode(refine.prompt_ids)  # it read the workspace
    for loss_on, trained in (("refine", [3]), ("refine_and_drafts", [0, 1, 3])):
        batches, norms = build_batches([pdr, cot], ["long"], load_recipe(None, [f"rl.operator_loss_on={loss_on}"]))
        samples = batches["long"]
        assert len(samples) == len(trained) + 1  # + the long_cot call, always trained
        for s, i in zip(samples, trained):  # one fresh-context call each: its prompt context, its completion trained
            t = pdr.turns[i]
            assert s.input_ids == t.prompt_ids + t.completion_ids
            assert s.mask == [0] * len(t.prompt_ids) + [1] * len(t.completion_ids)  # workspace/problem never trained
            assert s.advantage == 0.75 and s.correct is True  # the episode's advantage, whichever call
            assert s.temperatures[len(t.prompt_ids):] == [0.5] * len(t.completion_ids)  # PDR's, not the role's 1.0
        judge = pdr.turns[2]
        assert all(s.input_ids != judge.prompt_ids + judge.completion_ids for s in samples)  # the judge: never
        last = samples[-1]
        assert last.input_ids == cot.turns[0].prompt_ids + cot.turns[0].completion_ids and last.advantage == -0.5
        assert sum(last.mask) == cot.turns[0].output_tokens and last.temperatures[-1] == 0.7  # protocol.temperature
        assert norms["long"] == [float(sum(sum(s.mask) for s in samples))]
        # the NLL mean runs over the correct episode's trained tokens only
        assert nll_normalisers(batches) == {"long": [float(sum(sum(s.mask) for s in samples[:-1]))]}


def test_the_learner_trains_at_each_turns_sampling_temperature(rollouts, tiny_model, tiny_adapters):
    """The refine call was sampled at pdr_temperature 0.5 while the role's temperature is 1.0: the learner's
    logprobs, ratio and entropy are those of softmax(logits / 0.5)."""
    from longshort.config.rl import RLConfig
    from longshort.rl.learner import PolicyLearner

    r, pdr, _ = rollouts
    batches, norms = build_batches([pdr], ["long"], r)
    (s,) = batches["long"]
    lr = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=1e-3),
                       max_tokens={"long": 12, "short": 12}, temperatures={"long": 1.0, "short": 1.0})  # fmt: skip
    temps = lr.token_temperatures("long", s)
    own = [i for i, m in enumerate(s.mask) if m]
    assert {temps[i] for i in own} == {0.5}  # context tokens, never trained, stay at the role's 1.0
    at_half = lr.logprobs("long", [s.input_ids], 0.5)[0]
    per_token = lr.logprobs("long", [s.input_ids], [temps])[0]
    assert [per_token[i] for i in own] == pytest.approx([at_half[i] for i in own], abs=1e-6)
    assert max(abs(at_half[i] - lr.logprobs("long", [s.input_ids])[0][i]) for i in own) > 1e-3  # T matters here
    ids = torch.tensor([s.input_ids])
    with lr._activate("long", trainable=False), torch.no_grad():
        logits = lr.model(input_ids=ids).logits[0, :-1] / 0.5
    logsm = torch.log_softmax(logits, -1)
    want_entropy = float(sum(-(logsm[i - 1].exp() * logsm[i - 1]).sum() for i in own))
    stats = lr.train("long", [s], norms["long"])
    assert stats.ratio / stats.tokens == pytest.approx(1.0, abs=1e-5)  # old and new at the same temperature
    assert stats.entropy == pytest.approx(want_entropy, rel=1e-4)
    assert stats.gap / stats.gap_tokens < 1e-4  # engine (raw) vs learner (raw): still compared untempered


# ---------------------------------------------------------------------------------------------- the loss


def _grad(kind: str, logp0: torch.Tensor, adv: float, **kw):
    logp = logp0.clone().requires_grad_(True)
    t = policy_loss(logp, torch.zeros_like(logp), logp.detach(), torch.tensor([[adv]]), torch.ones_like(logp), None,
                    clip_low=0.2, clip_high=0.2, kl_coef=0.0, entropy_coef=0.0, normaliser=3.0, kind=kind, **kw)  # fmt: skip
    (g,) = torch.autograd.grad(t.loss, logp)
    return t, g[0]


def test_cispo_keeps_the_gradient_of_tokens_whose_ratio_is_clipped():
    logp0 = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5 (above 1 + 0.2), 0.5 (below 1 − 0.2), 1.1
    ppo, g_ppo = _grad("ppo_clip", logp0, 1.0)
    cispo, g_cispo = _grad("cispo", logp0, 1.0)
    # PPO-clip, A > 0: the token above the trust region gets no gradient; ∂(−ρA)/∂logp = −ρA elsewhere
    assert g_ppo.tolist() == pytest.approx([0.0, -0.5 / 3, -1.1 / 3])
    # CISPO: −sg(clip(ρ))·A·logπ, so ∂/∂logp = −clip(ρ)·A for every token, the clipped ones included
    assert g_cispo.tolist() == pytest.approx([-1.2 / 3, -0.8 / 3, -1.1 / 3])
    assert ppo.clipped == 1.0 and cispo.clipped == 2.0  # CISPO counts every token whose weight was bounded
    assert cispo.pg == pytest.approx(-float((torch.tensor([1.2, 0.8, 1.1]) * logp0[0]).sum()))
    _, g_neg = _grad("cispo", logp0, -2.0)  # a negative advantage: the weight is bounded the same way
    assert g_neg.tolist() == pytest.approx([2.4 / 3, 1.6 / 3, 2.2 / 3])
    _, g_ppo_neg = _grad("ppo_clip", logp0, -2.0)
    assert g_ppo_neg[1] == 0.0 and g_neg[1] != 0.0  # PPO drops the token below the region, CISPO keeps it


def test_nll_term_changes_the_loss_only_when_correct_episodes_exist():
    logp0 = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.4, 0.6, 0.9]]))
    base = dict(clip_low=0.2, clip_high=0.2, kl_coef=0.0, entropy_coef=0.0, normaliser=6.0)
    args = (logp0, logp0, logp0, torch.tensor([[1.0], [-1.0]]), torch.ones(2, 3), None)
    plain = policy_loss(*args, **base)
    none_correct = policy_loss(*args, **base, nll_coef=0.5, nll_mask=torch.zeros(2, 3), nll_normaliser=0.0)
    assert float(none_correct.loss) == float(plain.loss) and none_correct.nll_tokens == 0.0
    correct = torch.tensor([[1.0], [0.0]]) * torch.ones(2, 3)  # sequence 0 is from a correct episode
    with_nll = policy_loss(*args, **base, nll_coef=0.5, nll_mask=correct, nll_normaliser=3.0)
    mean_nll = -float(logp0[0].sum()) / 3
    assert float(with_nll.loss) == pytest.approx(float(plain.loss) + 0.5 * mean_nll)
    assert with_nll.nll_tokens == 3.0 and with_nll.nll == pytest.approx(3 * mean_nll)


def test_nll_coef_changes_the_update_only_when_an_episode_is_correct(rollouts, tiny_model, tiny_adapters):
    """The same refine sample, trained with nll_coef 0 and 1: the same update when its episode is wrong, another one
    when it is correct (the learner's loss, end to end)."""
    from longshort.config.rl import RLConfig
    from longshort.rl.learner import PolicyLearner

    r, pdr, _ = rollouts
    batches, norms = build_batches([pdr], ["long"], r)
    (s,) = batches["long"]

    def update(nll_coef: float, correct: bool) -> torch.Tensor:
        lr = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=1e-3, nll_coef=nll_coef, max_grad_norm=0),
                           max_tokens={"long": 12, "short": 12})  # fmt: skip
        before = torch.cat([p.detach().reshape(-1).clone() for p in lr.params["long"]])
        s.correct = correct
        batch = {"long": [s]}
        lr.train("long", [s], norms["long"], nll_normalisers(batch)["long"])
        return torch.cat([p.detach().reshape(-1) for p in lr.params["long"]]) - before

    try:
        assert torch.equal(update(0.0, False), update(1.0, False))
        assert not torch.allclose(update(0.0, True), update(1.0, True), atol=1e-7)
    finally:
        s.correct = True


# ---------------------------------------------------------------------------------------------- routing, refusals


def test_operator_mix_routes_its_share_of_the_stream_and_resumes_the_same():
    batch = [{"id": str(i)} for i in range(8)]
    half = route(load_recipe(None, ["protocol.name=pdr", "rl.operator_mix=0.5"]), batch, 0)
    assert [p["protocol"] for p in half] == ["long_cot", "pdr"] * 4
    quarter = route(load_recipe(None, ["protocol.name=pdr", "rl.operator_mix=0.25"]), batch, 0)
    assert [p["protocol"] for p in quarter].count("pdr") == 2
    r = load_recipe(None, ["protocol.name=pdr", "rl.operator_mix=0.3"])
    whole = route(r, batch, 0)
    assert route(r, batch[5:], 5) == whole[5:]  # a function of the stream position: a resumed run routes the same
    assert route(load_recipe(None, ["protocol.name=pdr"]), batch, 0) == batch  # mix 1: the recipe's protocol


@pytest.mark.parametrize("overrides,message", [
    (["protocol.name=pdr", "protocol.pdr_schedule=[4,2,1]"],
     "key 'protocol.pdr_schedule' is [4, 2, 1]: RL through pdr runs one-round operator rollouts, M = [m, 1]"),
    (["rl.operator_mix=0.5"], "key 'rl.operator_mix' is 0.5: it routes problems through the pdr operator, but "
                              "protocol.name is long_short"),
    (["protocol.name=pdr", "rl.loss=trpo"], "rl.loss"),
])
def test_rl_refuses_what_it_cannot_train_through(tmp_path, capsys, overrides, message):
    from longshort.cli import main

    from conftest import RL_RECIPE

    assert main(["rl", "--recipe", RL_RECIPE, f"run.out_dir={tmp_path}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []  # refused before the run directory is made


# ---------------------------------------------------------------------------------------------- a run that learns

# Two rows of the synthetic task (2 additions), the shipped reasoner's home ground; a step rolls out one of them.
LEARN_ROWS = [
    {"id": "syn0-train-000000", "problem": "Start with 7. Add 1, then 5. What is the result?", "answer": "13"},
    {"id": "syn0-train-000001", "problem": "Tom has 5 apples. He gets 2 more, then 5 more. How many apples does he have now?",
     "answer": "12"},
]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rl_through_pdr_learns_the_refine_format_on_one_seed(ray_cluster, tmp_path):
    """`longshort rl --recipe recipes/tiny/rl_pdr.yaml` on the shipped reasoner, every problem through the operator, 5
    steps: the run trains the refine calls and never the drafts, and at this seed the refine calls, trained on the
    workspace they read, finish with a boxed answer more often and the operator's reward rises (measured: refine
    format 0.31 -> 0.56, reward -0.31 -> -0.19, steps 1-2 -> 4-5).

    A regression check of one deterministic trajectory (HF engine, fixed seeds), like tests/test_golden.py, not
    evidence that this learning is robust: at other group sizes, problems or loss_on settings the same budget did not
    raise the reward (docs/rl.md, "What the tiny run shows"). ~2 min on 2 loaded cores."""
    from longshort.cli import main

    from conftest import REPO

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in LEARN_ROWS))
    recipe = f"{REPO}/recipes/tiny/rl_pdr.yaml"
    args = [f"run.out_dir={tmp_path}", "run.name=learn", f"model.base={REPO}/data/reasoner/tiny", f"data.train={data}",
            "rl.operator_mix=1", "rl.problems_per_step=1", "rl.group_size=8", "rl.steps=5", "rl.checkpoint_every=5"]
    assert main(["rl", "--recipe", recipe, "--no-progress", *args]) == 0
    rows = [json.loads(line) for line in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        assert r["sync/ok"] is True and r["episodes/pdr"] == 8 and "episodes/long_cot" not in r
        assert r["trained_tokens/refine"] > 0 and r["trained_tokens/draft"] == 0 and r["calls/draft"] == 2

    def mean(key, steps):
        return sum(rows[s - 1][key] for s in steps) / len(steps)

    first, last = (1, 2), (4, 5)
    assert mean("format_ok/refine", last) >= mean("format_ok/refine", first) + 0.15, [r["format_ok/refine"] for r in rows]
    assert mean("reward/pdr", last) > mean("reward/pdr", first) + 0.05, [r["reward/pdr"] for r in rows]
