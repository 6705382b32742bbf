"""Pure functions of a run's position, so a checkpoint needs to store only the position: the learning-rate
schedule (per optimizer update) and the data order (an endless stream of per-epoch shuffles)."""

from __future__ import annotations

import math

import numpy as np

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(update: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak rate for optimizer update `update` (0-based) of `total`: linear warm-up over `warmup`
    updates, then `constant`, `cosine` (to 0 at `total`) or `linear` (to 0 at `total`)."""
    if update < warmup:
        return (update + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown learning-rate schedule {kind!r} (choose from {', '.join(LR_SCHEDULES)})")


def scheduler(optimizer, total: int, warmup: int, kind: str):
    """A torch LambdaLR on `lr_factor`; its `get_last_lr()` before `step()` is the rate the next update uses."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, total, warmup, kind))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch `epoch` of `n` items: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, 2, epoch]).permutation(n).tolist()


def take(n: int, seed: int, cursor: int, count: int) -> list[int]:
    """Items `cursor .. cursor + count` of the stream epoch 0, epoch 1, ... (each a fresh shuffle of `n` items)."""
    out: list[int] = []
    order: list[int] = []
    for k in range(cursor, cursor + count):
        epoch, i = divmod(k, n)
        if i == 0 or not order:
            order = epoch_order(n, seed, epoch)
        out.append(order[i])
    return out
