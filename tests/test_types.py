"""The Episode vocabulary: chains, role training sequences, budgets, lossless JSONL."""

from longshort.types import Episode, Turn, read_episodes, write_episodes


def two_role_episode() -> Episode:
    ep = Episode(problem_id="p1", problem="1+2?", gold="3", protocol="long_short")
    ep.add(Turn(role="long", prompt_ids=[1, 2, 3], completion_ids=[10, 11], text="<think>a</think>", logprobs=[-0.1, -0.2]))
    ep.add(Turn(role="short", prompt_ids=[4, 5, 6, 7], completion_ids=[20], text="<answer>b</rethink>", logprobs=[-0.3]))
    ep.add(Turn(role="long", prompt_ids=[8, 9], completion_ids=[12, 13, 14], text="<think>c</think>", parent=0,
                logprobs=[-0.4, -0.5, -0.6]))
    ep.add(Turn(role="short", prompt_ids=[15], completion_ids=[21, 22], text="<answer>\\boxed{3}</answer>", parent=1,
                logprobs=[-0.7, -0.8]))
    return ep


def test_input_tokens_follow_the_parent_chain():
    ep = two_role_episode()
    assert [t.input_tokens for t in ep.turns] == [3, 4, 3 + 2 + 2, 4 + 1 + 1]
    assert ep.chain(2) == [0, 2] and ep.chain(3) == [1, 3]
    assert sorted(ep.leaves()) == [2, 3]
    assert ep.context_ids(2) == [1, 2, 3, 10, 11, 8, 9, 12, 13, 14]


def test_role_training_sequences_mask_only_own_tokens():
    ep = two_role_episode()
    (long_seq,) = ep.training_sequences("long")
    assert long_seq.input_ids == [1, 2, 3, 10, 11, 8, 9, 12, 13, 14]
    assert long_seq.mask == [0, 0, 0, 1, 1, 0, 0, 1, 1, 1]
    assert long_seq.old_logprobs[3:5] == [-0.1, -0.2] and long_seq.old_logprobs[7:] == [-0.4, -0.5, -0.6]
    (short_seq,) = ep.training_sequences("short")
    assert short_seq.mask == [0, 0, 0, 0, 1, 0, 1, 1]
    assert ep.training_sequences("base") == []


def test_budgets():
    ep = two_role_episode()
    # B_total = generated tokens over all calls; reads are counted apart. Turns without a step (built by hand,
    # or written before steps were recorded) are each a step of their own when accepted: B_seq = B_total here.
    assert ep.b_total == ep.b_seq == 2 + 1 + 3 + 2
    assert ep.tokens_read == 3 + 4 + (3 + 2 + 2) + (4 + 1 + 1)
    ep.turns[1].accepted = False
    assert ep.b_seq == ep.b_total - 1 and ep.critical_path() == [0, 2, 3]
    assert ep.generated_tokens == 8 and ep.tokens_by_role() == {"long": 5, "short": 3}
    assert ep.rethinks == 1


def test_b_seq_is_the_critical_path_whichever_draft_is_longest():
    """Steps of parallel calls: B_seq takes each step's longest generation, accepted or not."""
    ep = Episode(problem_id="p", problem="q", gold="1", protocol="pdr")
    outs = [(0, 5, False), (0, 9, False), (0, 7, True),  # round 1: three drafts, the accepted one is not the longest
            (1, 2, True),  # judge
            (2, 4, True)]  # final call
    for step, n, accepted in outs:
        ep.add(Turn(role="base", prompt_ids=[1] * 10, completion_ids=[2] * n, text="x", step=step, accepted=accepted, wall_s=0.1 * (step + 1)))
    assert ep.critical_path() == [1, 3, 4]
    assert ep.b_seq == 9 + 2 + 4 and ep.b_total == 5 + 9 + 7 + 2 + 4 and ep.tokens_read == 50
    assert abs(ep.latency_s - (0.1 + 0.2 + 0.3)) < 1e-12
    ep.turns[1].accepted = ep.turns[2].accepted = False  # acceptance does not move the critical path
    assert ep.b_seq == 15
    assert Episode.from_dict(ep.to_dict()).b_seq == 15  # steps survive the JSONL round trip


def test_jsonl_roundtrip_is_lossless(tmp_path):
    ep = two_role_episode()
    ep.rewards = {"long": {"correct": 1.0}}
    ep.advantages = {"long": 0.5}
    ep.meta = {"group": 3}
    path = tmp_path / "eps.jsonl"
    write_episodes(str(path), [ep, ep])
    back = list(read_episodes(str(path)))
    assert back == [ep, ep]
