"""Multi-turn RL of both roles on Ray (`longshort rl`, docs/rl.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from longshort.config.loader import doc
from longshort.config.lora import LoRAConfig
from longshort.errors import ConfigError


@dataclass
class RewardConfig:
    # `rl.rewards: paper` is the Long⊗Short paper's reward: the shared outcome reward alone. Our default adds a
    # format, a length and a synergy term per role (docs/rl.md, "Rewards": they are ours, not the paper's).
    PRESETS: ClassVar[dict[str, dict[str, float]]] = {
        "paper": {"correct": 1.0, "format": 0.0, "length": 0.0, "synergy": 0.0},
    }
    correct: float = doc("Weight of the correctness reward c ∈ {0, 1} (grader verdict on the final answer), shared by both roles.", 1.0)
    format: float = doc("Weight of the per-role format reward −(malformed turns / turns of the role) (tag parser verdict).", 0.2)
    length: float = doc(
        "Weight of the per-role length reward, Kimi k1.5 style (Kimi Team, arXiv 2501.12599 §2.3.3): "
        "λ = 0.5 − (n − n_min)/(n_max − n_min) over the role's own tokens n within the group; λ if correct else min(0, λ).",
        0.1,
    )
    synergy: float = doc(
        "Weight of the synergy reward: long is credited when short then finishes correctly and cheaply "
        "(c·(1 − t_final/T_short)/(1 + R)); short when it finishes correctly without needless </rethink> (c/(1 + N)).",
        0.5,
    )


@dataclass
class RLConfig:
    # Old spellings of keys, each refused with the new key's name (the loader reads this where it reports unknown keys).
    RENAMED: ClassVar[dict[str, str]] = {"lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_targets": "lora.target_modules"}
    steps: int = doc("RL steps (one rollout batch + one update + one verified sync each).", 20)
    problems_per_step: int = doc("Problems sampled per step (each gets a group of `group_size` episodes).", 4)
    group_size: int = doc("Episodes per problem (G); the group is the baseline of GRPO/RLOO (Shao et al. 2402.03300).", 4)
    schedule: Literal["joint", "alternate"] = doc(
        "`joint`: both adapters updated every step from the same episodes; `alternate`: the Long⊗Short paper's mode as we read it "
        "(Ning et al. 2505.11827): `alternate_k` steps training long with short frozen, then `alternate_k` steps short.",
        "joint",
    )
    alternate_k: int = doc("Steps per phase of `schedule: alternate`.", 2)
    estimator: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"] = doc(
        "Advantage estimator, per role, group = problem: `grpo` (r−mean)/std (DeepSeekMath 2402.03300); `dr_grpo` "
        "r−mean (Liu et al. 2503.20783); `rloo` r − leave-one-out mean (Ahmadian et al. 2402.14740); `reinforce_pp` "
        "r − group mean, then whitened over the batch (REINFORCE++-baseline, Hu 2501.03262).",
        "grpo",
    )
    lr: float = doc("AdamW learning rate of each role's LoRA parameters.", 1e-4)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    warmup_steps: int = doc("Linear learning-rate warm-up steps (per optimizer update).", 0)
    lr_schedule: Literal["constant", "cosine"] = doc("Learning-rate schedule after warm-up (over `steps`).", "constant")
    ppo_epochs: int = doc("Passes over each step's episodes.", 1)
    minibatches: int = doc("Optimizer updates per epoch (the step's sequences are split in this many minibatches).", 1)
    micro_batch_size: int = doc("Rows per forward/backward on one learner worker (memory knob; no effect on the update): "
                                "one sequence each, or with rl.pack_sequences as many as fit the longest one's length.", 8)
    pack_sequences: bool = doc(
        "Learner: lay a step's sequences end to end in rows as long as its longest sequence (attention kept within "
        "each sequence) instead of padding each to that length; the same update with fewer positions.", True)
    offpolicy_steps: int = doc(
        "0: each step's rollouts use the adapters it trains. 1: step k+1 is rolled out with step k's adapters while "
        "the learner trains on step k, and the PPO ratio is taken against the adapters that sampled (one step "
        "off-policy); a checkpoint step is not overlapped, so a resumed run repeats the uninterrupted one.", 0)
    clip_low: float = doc("PPO ratio clip ε_low: ratio clipped to [1 − clip_low, 1 + clip_high] (Schulman et al. 1707.06347).", 0.2)
    clip_high: float = doc("PPO ratio clip ε_high (> clip_low = DAPO's clip-higher, Yu et al. 2503.14476).", 0.2)
    loss: Literal["ppo_clip", "cispo"] = doc(
        "Policy-gradient loss: `ppo_clip` −min(ρA, clip(ρ)A) (Schulman et al. 1707.06347); `cispo` "
        "−sg(clip(ρ, 1 − clip_low, 1 + clip_high))·A·logπ (MiniMax-M1, 2506.13585): the weight is clipped, never the "
        "token, so every token keeps a gradient.",
        "ppo_clip",
    )
    nll_coef: float = doc(
        "Weight of an NLL term on correct rollouts: the mean token NLL (at the sampling temperature) over the trainable "
        "tokens of the episodes graded correct, added to the loss (0 = off).",
        0.0,
    )
    operator_mix: float = doc(
        "protocol.name pdr: share of a step's problems rolled out through the operator (one PDR round, then a refine "
        "call); the rest through `long_cot` (Madaan et al. 2510.01123 use 0.5). 1 = every problem through PDR.",
        1.0,
    )
    operator_loss_on: Literal["refine", "refine_and_drafts"] = doc(
        "protocol.name pdr: which calls of an operator rollout are trained: `refine` (the refine call, conditioned on "
        "the workspace) or `refine_and_drafts` (the drafts too); judge/summary calls and every prompt never.",
        "refine",
    )
    kl_coef: float = doc("Weight β of the KL to the frozen starting (SFT) adapter, k3 estimator exp(ref−logp) − (ref−logp) − 1.", 0.01)
    entropy_coef: float = doc("Weight of the entropy bonus (0 = off).", 0.0)
    loss_agg: Literal["token_mean", "token_sum_norm"] = doc(
        "Loss aggregation: `token_mean` over every trainable token of the minibatch (DAPO); `token_sum_norm` sums and "
        "divides by a constant (minibatch sequences × the role's max_tokens, Dr. GRPO).",
        "token_mean",
    )
    max_grad_norm: float = doc("Gradient clipping (global L2 norm per role); 0 = off.", 1.0)
    rewards: RewardConfig = doc(
        "Reward weights (each component is also logged unweighted), or `paper`: the Long⊗Short paper's shared outcome reward "
        "alone (correct 1, format/length/synergy 0).",
        factory=RewardConfig,
    )
    lora: LoRAConfig = doc(
        "LoRA shape of a fresh adapter (a role with roles.<role>.adapter null; a start adapter keeps its own shape). "
        "Same type as `sft.lora`, without its dropout (the engine samples without one).",
        factory=LoRAConfig,
    )
    ray_address: str | None = doc("Ray cluster to join (`auto`, `HOST:PORT`); null = `RAY_ADDRESS` or a new local cluster.", None)
    ray_num_cpus: int | None = doc("CPUs of a new local Ray cluster (null = Ray's count).", None)
    rollout_actors: int = doc("Rollout actors, each hosting one engine with both role adapters; problems are split between them.", 1)
    rollout_cpus: float = doc("CPUs reserved per rollout actor.", 1.0)
    rollout_gpus: float = doc("GPUs reserved per rollout actor (0 on CPU-only machines).", 0.0)
    learner_workers: int = doc("Data-parallel learner workers (torch.distributed; gloo on CPU, nccl on GPU).", 1)
    learner_cpus: float = doc("CPUs reserved per learner worker.", 1.0)
    learner_gpus: float = doc("GPUs reserved per learner worker.", 0.0)
    sync_tolerance: float | None = doc(
        "Largest allowed |engine − learner| logprob on the probe sequences after each sync (and on every sampled "
        "token); above it the run stops. null = from the resolved dtypes: 1e-3 when learner and engine both run "
        "float32, the bf16 value measured in docs/rl.md (\"Precision\") when either runs bfloat16/float16.",
        None,
    )
    gradient_checkpointing: bool = doc(
        "Learner: recompute each layer's activations in backward (memory for ~30% more compute; LoRA-safe).", False
    )
    checkpoint_every: int = doc("Write a checkpoint every N steps (and at the end).", 5)
    keep_checkpoints: int = doc("Complete checkpoints kept (older ones are deleted).", 2)
    log_episodes: int = doc("Episodes per step written to episodes.jsonl (with rewards and advantages).", 4)

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "problems_per_step": self.problems_per_step,
            "alternate_k": self.alternate_k,
            "ppo_epochs": self.ppo_epochs,
            "minibatches": self.minibatches,
            "micro_batch_size": self.micro_batch_size,
            "rollout_actors": self.rollout_actors,
            "learner_workers": self.learner_workers,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"key 'rl.{key}' must be >= 1, got {value}")
        if self.offpolicy_steps not in (0, 1):
            raise ConfigError(f"key 'rl.offpolicy_steps' must be 0 or 1, got {self.offpolicy_steps}")
        if self.group_size < 2:
            raise ConfigError(f"key 'rl.group_size' must be >= 2 (the group is the baseline), got {self.group_size}")
        if self.lr <= 0:
            raise ConfigError(f"key 'rl.lr' must be > 0, got {self.lr}")
        if not 0 <= self.operator_mix <= 1:
            raise ConfigError(f"key 'rl.operator_mix' must be in [0, 1], got {self.operator_mix}")
        for key in ("clip_low", "clip_high", "kl_coef", "entropy_coef", "max_grad_norm", "weight_decay", "sync_tolerance",
                    "nll_coef"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"key 'rl.{key}' must be >= 0, got {getattr(self, key)}")
        if self.clip_low >= 1:
            raise ConfigError(f"key 'rl.clip_low' must be < 1, got {self.clip_low}")
        for key in ("rollout_cpus", "rollout_gpus", "learner_cpus", "learner_gpus"):
            if getattr(self, key) < 0:
                raise ConfigError(f"key 'rl.{key}' must be >= 0, got {getattr(self, key)}")
