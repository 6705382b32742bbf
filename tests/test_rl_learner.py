"""The learner on a real episode: role masks, learner == engine logprobs, per-role updates, atomic checkpoints."""

from __future__ import annotations

import pytest

from longshort.config.recipe import Recipe
from longshort.config.rl import RLConfig
from longshort.rl import checkpoint
from longshort.run.checkpoint import complete_dirs
from longshort.rl.learner import PolicyLearner
from longshort.types import TrainSequence


@pytest.fixture(scope="module")
def episode(hf_engine, tiny_adapters):
    """One real long_short episode from the HF engine (tiny model, the session's long/short adapters)."""
    from longshort.protocols import run_protocol

    recipe = Recipe()
    recipe.protocol.max_turns = 4
    recipe.roles.long.adapter, recipe.roles.short.adapter = tiny_adapters["long"], tiny_adapters["short"]
    recipe.roles.long.max_tokens, recipe.roles.short.max_tokens = 24, 12
    recipe.roles.long.temperature = recipe.roles.short.temperature = 1.0
    rows = [{"id": "p1", "problem": "Start with 3. Add 4. What is the result?", "answer": "7"}]
    (ep,) = run_protocol("long_short", hf_engine, rows, recipe, seed=1)
    return ep


@pytest.fixture(scope="module")
def learner(tiny_model, tiny_adapters):
    return PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=5e-3), max_tokens={"long": 24, "short": 12})


def test_role_masks_from_a_real_episode(episode):
    assert {t.role for t in episode.turns} == {"long", "short"}
    for role in ("long", "short"):
        (seq,) = episode.training_sequences(role)  # each role's turns form one chain
        own = [tok for t in episode.turns if t.role == role for tok in t.completion_ids]
        assert [tok for tok, m in zip(seq.input_ids, seq.mask) if m] == own
        # context = the role's view of the transcript: the partner's text is there, but never trainable
        assert sum(seq.mask) == len(own) < len(seq.input_ids)


def test_learner_logprobs_equal_the_engine_sampling_logprobs(episode, learner):
    for role in ("long", "short"):
        (seq,) = episode.training_sequences(role)
        mine = learner.logprobs(role, [seq.input_ids])[0]
        diffs = [abs(a - b) for a, b, m in zip(mine, seq.old_logprobs, seq.mask) if m]
        assert diffs and max(diffs) < 1e-4


def test_ppo_logprobs_use_the_sampling_temperature(episode, tiny_model, tiny_adapters, learner):
    """Rollouts sampled at temperature T are trained on softmax(logits / T); the sync probe stays on raw logits."""
    import torch

    t = 0.5
    warm = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=5e-3),
                         max_tokens={"long": 24, "short": 12}, temperatures={"long": t, "short": 0.0})  # fmt: skip
    (seq,) = episode.training_sequences("long")
    ids = torch.tensor([seq.input_ids])
    with warm._activate("long", trainable=False), torch.no_grad():
        logits = warm.model(input_ids=ids).logits[0, :-1]
    want = torch.log_softmax(logits / t, -1).gather(-1, ids[0, 1:, None])[:, 0].tolist()
    got = warm.logprobs("long", [seq.input_ids], t)[0][1:]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
    assert max(abs(a - b) for a, b in zip(got, learner.logprobs("long", [seq.input_ids])[0][1:])) > 1e-3  # T matters
    sample = TrainSequence("long", seq.input_ids, seq.mask, list(seq.old_logprobs), advantage=1.0)
    stats = warm.train("long", [sample], [float(sum(seq.mask))])
    assert stats.ratio / stats.tokens == pytest.approx(1.0, abs=1e-5)  # old and new agree: the same T on both
    assert stats.gap / stats.gap_tokens < 1e-4  # engine (raw) vs learner (raw): still compared untempered
    assert warm.temperature == {"long": t, "short": 1.0}  # greedy rollouts train the untempered policy


def test_training_one_role_leaves_the_other_and_the_reference(episode, tiny_model, tiny_adapters):
    lr = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=2e-3), max_tokens={"long": 24, "short": 12})
    (seq,) = episode.training_sequences("long")
    ids = [seq.input_ids]
    before = {a: lr.logprobs(a, ids)[0] for a in ("long", "short", "long_ref", None)}
    stats = lr.train("long", [TrainSequence("long", seq.input_ids, seq.mask, advantage=1.0)], [float(sum(seq.mask))])
    assert stats.grad_norm > 0 and stats.tokens == sum(seq.mask)
    after = {a: lr.logprobs(a, ids)[0] for a in before}
    assert before["short"] == after["short"] and before["long_ref"] == after["long_ref"] and before[None] == after[None]
    own = [i for i, m in enumerate(seq.mask) if m]
    # a positive advantage raises the logprob of the role's own sampled tokens
    assert sum(after["long"][i] for i in own) > sum(before["long"][i] for i in own)
    stats2 = lr.train("long", [TrainSequence("long", seq.input_ids, seq.mask, advantage=1.0)], [float(sum(seq.mask))])
    assert stats2.kl > 0  # the policy has moved away from its frozen SFT reference


def test_checkpoint_is_atomic_and_a_corrupt_one_is_skipped(learner, tmp_path, capsys):
    root = tmp_path / "ckpt"
    state = learner.state()
    checkpoint.save(root, 2, state, {"cursor": 8}, keep=3)
    p4 = checkpoint.save(root, 4, state, {"cursor": 16}, keep=3)
    assert checkpoint.latest(root).step == 4
    blob = p4 / "trainer.pt"
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    got = checkpoint.latest(root)
    assert got.step == 2 and got.state["cursor"] == 8
    assert "checksum mismatch in trainer.pt" in capsys.readouterr().err
    (root / "step-000006.partial").mkdir()  # an interrupted write is never picked
    assert checkpoint.latest(root).step == 2
    learner.load_trainer_state(checkpoint.trainer_bytes(got))
    checkpoint.save(root, 8, state, {"cursor": 1}, keep=1)
    assert [p.name for p in complete_dirs(root)] == ["step-000008"]


def _varied(n: int = 6) -> list[TrainSequence]:
    """Sequences of different lengths with non-zero advantages: the padded layout wastes positions on them."""
    import random

    rng = random.Random(3)
    out = []
    for i in range(n):
        k = rng.randint(14, 60)
        out.append(TrainSequence("long", [rng.randrange(5, 800) for _ in range(k)], [0] * 8 + [1] * (k - 8),
                                 advantage=1.0 if i % 2 else -0.5))
    return out


LR = 5e-3


def _one_update(tiny_model, tiny_adapters, seqs, behaviour=None, **cfg):
    import torch

    lrn = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=LR, **cfg),
                        max_tokens={"long": 24, "short": 12}, temperatures={"long": 0.7, "short": 1.0})
    stats = lrn.train("long", seqs, [float(sum(sum(s.mask) for s in seqs))], behaviour=behaviour)
    return stats, torch.cat([p.detach().reshape(-1) for p in lrn.params["long"]])


def _same_adam_step(a, b) -> bool:
    """Adam's first step moves a coordinate by lr·g/(|g| + eps): exactly ±lr wherever |g| ≫ eps, so two runs that
    differ only in rounding agree there, while a coordinate whose gradient is at eps's scale may land anywhere in
    ±lr (seen: 1.3e-4 apart on one coordinate). So nearly every coordinate agrees, and none is apart by more than 2·lr."""
    d = (a - b).abs()
    return (d > 1e-6).float().mean().item() < 1e-3 and d.max().item() <= 2 * LR


def test_packed_rows_give_the_padded_update_with_fewer_positions(tiny_model, tiny_adapters):
    """The same PPO update (loss terms, gradient norm, new weights) whether each sequence is padded to the longest
    or the sequences are packed end to end with attention kept inside each one; packing reads fewer positions."""
    seqs = _varied()
    padded, w_pad = _one_update(tiny_model, tiny_adapters, seqs, pack_sequences=False, micro_batch_size=2)
    packed, w_pack = _one_update(tiny_model, tiny_adapters, seqs, pack_sequences=True, micro_batch_size=2)
    for k in ("pg", "kl", "entropy", "ratio", "tokens"):
        assert getattr(packed, k) == pytest.approx(getattr(padded, k), rel=1e-4, abs=1e-6), k
    assert packed.grad_norm == pytest.approx(padded.grad_norm, rel=1e-4) and padded.grad_norm > 0
    assert _same_adam_step(w_pack, w_pad)
    assert packed.positions - packed.padding == padded.positions - padded.padding == sum(len(s.input_ids) for s in seqs)
    assert packed.padding < padded.padding


def test_one_epoch_takes_pi_old_from_the_training_forward(tiny_model, tiny_adapters):
    """With one epoch and one minibatch π_old is the policy of the training forward: no scoring pass runs, and the
    update equals the one that scores π_old separately (forced here by naming the current adapter as behaviour)."""
    from longshort.rl.actors import read_adapter

    seqs = _varied()
    fused, w_fused = _one_update(tiny_model, tiny_adapters, seqs)
    scored, w_scored = _one_update(tiny_model, tiny_adapters, seqs, behaviour=read_adapter(tiny_adapters["long"]))
    assert fused.ratio / fused.tokens == 1.0  # exactly: old is the forward's own detached logprob
    assert scored.ratio / scored.tokens == pytest.approx(1.0, abs=1e-5)
    assert scored.pg == pytest.approx(fused.pg, rel=1e-4, abs=1e-6)
    assert _same_adam_step(w_fused, w_scored)


def test_an_offpolicy_batch_is_scored_under_the_adapter_that_sampled_it(episode, tiny_model, tiny_adapters):
    """The episode was sampled with the session's adapters. After one update the learner's policy differs from them:
    scored against its own weights the sampled tokens are off (gap), against the sampling adapter they match, and the
    PPO ratio then measures the one-step drift (≠ 1)."""
    from longshort.rl.actors import read_adapter

    lrn = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=2e-2),
                        max_tokens={"long": 24, "short": 12}, temperatures={"long": 1.0, "short": 1.0})
    (seq,) = episode.training_sequences("long")
    seq.advantage = 1.0
    lrn.train("long", [seq], [float(sum(seq.mask))])  # the policy moves one step
    sampled_with = read_adapter(tiny_adapters["long"])
    drifted = lrn.train("long", [seq], [float(sum(seq.mask))], behaviour=lrn.export_adapter("long"))
    assert drifted.gap_max > 1e-3  # the current policy is not the one that sampled
    off = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=2e-2),
                        max_tokens={"long": 24, "short": 12}, temperatures={"long": 1.0, "short": 1.0})
    off.train("long", [seq], [float(sum(seq.mask))])
    stats = off.train("long", [seq], [float(sum(seq.mask))], behaviour=sampled_with)
    assert stats.gap_max < 1e-4  # the engine's logprobs are the sampling adapter's
    assert abs(stats.ratio / stats.tokens - 1.0) > 1e-3  # π_θ / π_behaviour: the one step of drift
