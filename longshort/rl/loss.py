"""Policy loss (PPO-clip or CISPO) with a k3 KL penalty to the frozen reference, an optional entropy bonus and an
optional NLL term on the tokens of correct rollouts.

All terms are per token; `policy_loss` returns the SUM over trainable tokens divided by a normaliser the
caller passes (the minibatch's global trainable token count for token-mean), so splitting a minibatch over
micro-batches or data-parallel workers and summing gradients gives exactly the full-batch update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossTerms:
    """Sums over trainable tokens (divide by the token count for means)."""

    loss: torch.Tensor  # already divided by the normaliser; call .backward() on it
    pg: float
    kl: float
    entropy: float
    clipped: float  # tokens whose ratio was clipped
    ratio: float
    tokens: float
    nll: float = 0.0  # summed NLL over the correct episodes' tokens (0 when the term is off)
    nll_tokens: float = 0.0


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π || π_ref): exp(ref − logp) − (ref − logp) − 1 ≥ 0, per token."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None,
    *,
    clip_low: float,
    clip_high: float,
    kl_coef: float,
    entropy_coef: float,
    normaliser: float,
    kind: str = "ppo_clip",
    nll_coef: float = 0.0,
    nll_mask: torch.Tensor | None = None,
    nll_normaliser: float = 1.0,
) -> LossTerms:
    """Per token pg + β·k3 − α·H, summed over `mask` and divided by `normaliser`, plus
    nll_coef · Σ(−logπ over `nll_mask`) / `nll_normaliser` (the correct episodes' trainable tokens).

    pg is `kind`: `ppo_clip` −min(ρA, clip(ρ, 1−ε_l, 1+ε_h)A); `cispo` −sg(clip(ρ, 1−ε_l, 1+ε_h))·A·logπ (MiniMax-M1,
    arXiv 2506.13585): PPO zeroes the gradient of a token whose ratio left the trust region on the side the advantage
    pushes, CISPO only bounds that token's weight, so every token keeps a gradient. All tensors are [batch, tokens];
    `advantages` is broadcast per sequence by the caller.
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    bounded = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    if kind == "ppo_clip":
        unclipped = ratio * advantages
        clipped = bounded * advantages
        pg = -torch.minimum(unclipped, clipped)
        was_clipped = clipped < unclipped
    elif kind == "cispo":
        pg = -bounded.detach() * advantages * logp
        was_clipped = bounded != ratio
    else:
        raise ValueError(f"unknown policy loss {kind!r}")
    kl = k3_kl(logp, ref_logp)
    per_token = pg + kl_coef * kl
    if entropy is not None and entropy_coef:
        per_token = per_token - entropy_coef * entropy
    loss = (per_token * mask).sum() / normaliser
    nll = nll_tokens = 0.0
    if nll_coef and nll_mask is not None and nll_normaliser > 0:  # 0: no correct episode in the minibatch
        nll_mask = nll_mask.to(logp.dtype)
        nll_sum = (-logp * nll_mask).sum()
        loss = loss + nll_coef * nll_sum / nll_normaliser
        nll, nll_tokens = float(nll_sum.detach()), float(nll_mask.sum())
    with torch.no_grad():
        return LossTerms(
            loss=loss,
            pg=float((pg * mask).sum()),
            kl=float((kl * mask).sum()),
            entropy=float((entropy * mask).sum()) if entropy is not None else 0.0,
            clipped=float((was_clipped & (mask > 0)).sum()),
            ratio=float((ratio * mask).sum()),
            tokens=float(mask.sum()),
            nll=nll,
            nll_tokens=nll_tokens,
        )


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprob of each target under `logits` ([B, T, V] predicting [B, T]) and, optionally, the entropy per position."""
    logsm = torch.log_softmax(logits.float(), dim=-1)
    lp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logsm.exp() * logsm).sum(-1) if with_entropy else None
    return lp, ent
