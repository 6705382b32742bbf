"""Role views: own turns assistant (trainable), partner turns user (context), rendered by the real template."""

from longshort.chat import prompt_text, tokenize_view

TURNS = [("long", "<think> 3 + 4 = 7 </think>"), ("short", "<answer> 7? </rethink>"), ("long", "<think> yes 7 </think>")]


def test_view_masks_token_by_token(tiny_tokenizer):
    """Trainable = exactly what the role generates: its turns' text, and the end-of-turn token only where no stop
    string ended the turn (the engine stops on the stop string; `<|im_end|>` and the newline are then chat glue)."""
    tok = tiny_tokenizer
    ids, mask = tokenize_view(tok, "SYS-L", "What is 3 + 4?", TURNS, "long", stop=["</think>"])
    assert len(ids) == len(mask)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "<think> 3 + 4 = 7 </think><think> yes 7 </think>"
    ids_s, mask_s = tokenize_view(tok, "SYS-S", "What is 3 + 4?", TURNS, "short", stop=["</rethink>", "</answer>"])
    assert tok.decode([i for i, m in zip(ids_s, mask_s) if m]) == "<answer> 7? </rethink>"
    full = tok.decode(ids_s)
    assert "SYS-S" in full and "SYS-L" not in full and "<|im_start|>user\n<think> 3 + 4 = 7 </think>" in full
    # served without stop strings the role ends each turn itself: the end-of-turn token is its own, the newline is not
    ids, mask = tokenize_view(tok, "SYS-L", "What is 3 + 4?", TURNS, "long", stop=[])
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "<think> 3 + 4 = 7 </think><|im_end|><think> yes 7 </think><|im_end|>"
    assert tok.decode(ids).endswith("<|im_start|>assistant\n<think> yes 7 </think><|im_end|>")  # ends at the last own token


def test_prompt_is_prefix_of_next_view(tiny_tokenizer):
    """The next turn's prompt extends the previous prompt + completion: turns chain without re-encoding."""
    tok = tiny_tokenizer
    p0 = prompt_text(tok, "S", "Q", [], "long")
    p2 = prompt_text(tok, "S", "Q", TURNS[:2], "long")
    assert p2.startswith(p0 + TURNS[0][1])
