"""Real-checkpoint path of the MemeLens-style VLM: a Hugging Face image-text-to-text model from a LOCAL
folder, fine-tuned with LoRA.

MemeLens fine-tunes Qwen3-VL-8B-Instruct with LoRA (rank 16, alpha 32, dropout 0.05, all linear layers,
bf16) on answers of the form ``Label: ...\\nExplanation: ...``. This module loads any
``AutoModelForImageTextToText`` checkpoint (Qwen2/2.5/3-VL, LLaVA, ...) from disk only (no hub), wraps
it with LoRA, builds chat-formatted inputs whose labels count only the answer tokens, and offers a train
step, candidate scoring (log-likelihood of ``Label: <cand>``), greedy generation and adapter save/load.

LoRA targets: peft's own ``"all-linear"`` shorthand takes EVERY ``nn.Linear`` except the output
embedding (``lm_head``), i.e. it also adapts the vision tower and the multimodal projector. We resolve
``"all-linear"`` ourselves (:func:`resolve_lora_targets`) to the linear layers of the LANGUAGE MODEL only:
vision tower / visual encoder, multimodal projector / merger and ``lm_head`` are excluded (the usual
frozen-vision-tower VLM LoRA recipe, e.g. LLaMA-Factory's defaults). An explicit list of module names
(or suffixes, as peft matches them) is passed to peft unchanged.

Only torch and pydantic are imported at module import time; transformers and peft are imported inside
the functions (a GPU box may lack some packages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

IGNORE_INDEX = -100

# Module-name fragments of the parts that "all-linear" must NOT adapt (vision side and projector).
VISION_MODULE_MARKERS: tuple[str, ...] = (
    "vision_tower",
    "vision_model",
    "visual",
    "vision_encoder",
    "image_encoder",
    "multi_modal_projector",
    "mm_projector",
    "merger",
)


class LoraSettings(BaseModel):
    """LoRA hyper-parameters (MemeLens defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    rank: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # "all-linear" = every linear layer of the language model except lm_head (see module docstring);
    # or an explicit list of module names / suffixes handed to peft as is.
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class HFVlmConfig(BaseModel):
    """Where and how to load a local image-text-to-text checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    trust_remote_code: bool = False  # never on unless set explicitly
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA when supported, fp32 on CPU
    gradient_checkpointing: bool | None = None  # None: on when the device is CUDA
    lora: LoraSettings = LoraSettings()
    max_length: int = Field(2048, ge=8)
    device: str = "auto"  # "auto" -> cuda when available else cpu; or "cpu", "cuda", "cuda:1", ...


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _check_path(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"VLM checkpoint folder not found: {path} (only local folders are supported)")
    if not path.is_dir():
        raise NotADirectoryError(f"VLM checkpoint path is not a folder: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"VLM checkpoint folder has no config.json: {path}")
    return path


def resolve_lora_targets(model: torch.nn.Module, target_modules: str | list[str] = "all-linear") -> list[str]:
    """Module names LoRA adapts. ``"all-linear"``: every ``nn.Linear`` outside the vision tower / projector,
    minus the output embedding (lm_head). A list is returned unchanged. On a model that already carries
    peft layers, the adapted layers count (not their inner ``base_layer`` / ``lora_*`` modules)."""
    if not isinstance(target_modules, str):
        return list(target_modules)
    if target_modules != "all-linear":
        raise ValueError(f"target_modules must be 'all-linear' or a list of names, got {target_modules!r}")
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if not (isinstance(module, torch.nn.Linear) or isinstance(base, torch.nn.Linear)):
            continue
        if module is out_emb or (base is not None and base is out_emb):
            continue
        parts = name.split(".")
        if any(p == "base_layer" or p.startswith("lora_") for p in parts):
            continue  # inside a peft layer
        if any(marker in parts for marker in VISION_MODULE_MARKERS) or parts[-1] == "lm_head":
            continue
        names.append(name)
    if not names:
        raise ValueError("no linear layers found for LoRA outside the vision tower / projector")
    return sorted(names)


def apply_lora(model: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = resolve_lora_targets(model, lora.target_modules)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
    )
    return get_peft_model(model, config)


def _enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing on the base model (call before wrapping with peft)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # Frozen embeddings (peft) + checkpointed blocks: make the block inputs require grad so gradients
    # reach the adapters even with the reentrant variant.
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def load_hf_vlm(cfg: HFVlmConfig, *, apply_adapter: bool = True) -> tuple[Any, Any]:
    """Load (model, processor) from ``cfg.path`` (local files only), with LoRA when ``cfg.lora.enabled``
    (and ``apply_adapter``), gradient checkpointing when asked (default: on CUDA)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = _check_path(cfg.path)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=cfg.trust_remote_code, dtype=dtype
    )
    processor = AutoProcessor.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=cfg.trust_remote_code
    )
    model.to(device)
    checkpointing = (
        cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device.type == "cuda"
    )
    if checkpointing:
        _enable_gradient_checkpointing(model)
    if apply_adapter and cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model, processor


def trainable_parameters(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def render_prompt(processor: Any, prompt: str) -> str:
    """Chat-formatted user turn with one image, ending with the assistant generation prompt."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", "<image>")
    return f"{image_token}\n{prompt}\n"


def build_inputs(
    processor: Any,
    images: list,
    prompts: list[str],
    targets: list[str] | None = None,
    *,
    add_eos: bool = True,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs for (image, prompt[, target]) triples, right-padded.

    The prompt goes through the processor's chat template (image placeholder + text + generation prompt)
    and the processor itself (which expands the image placeholder); each target is tokenised separately
    (no special tokens, plus EOS when ``add_eos``) and appended, so prompt/answer boundaries are exact.
    With targets, ``labels`` equal the input ids on the answer tokens only; prompt and padding positions
    are -100. ``max_length`` truncates the answer; a prompt alone longer than it is an error.
    """
    if len(images) != len(prompts) or (targets is not None and len(targets) != len(prompts)):
        raise ValueError("images, prompts and targets must have the same length")
    tok = _tokenizer(processor)
    texts = [render_prompt(processor, p) for p in prompts]
    enc = processor(images=list(images), text=texts, return_tensors="pt", padding=True)
    ids = enc["input_ids"]
    mask = enc.get("attention_mask", torch.ones_like(ids))
    n, width = ids.shape
    # Any other per-token tensor (e.g. mm_token_type_ids) gets extended alongside input_ids.
    per_token = [
        k
        for k, v in enc.items()
        if k not in ("input_ids", "attention_mask")
        and torch.is_tensor(v)
        and v.dim() == 2
        and tuple(v.shape) == (n, width)
    ]
    prompt_rows = []
    for i in range(n):
        keep = mask[i].bool()
        prompt_rows.append({"input_ids": ids[i][keep], **{k: enc[k][i][keep] for k in per_token}})

    answer_rows: list[list[int]] = [[] for _ in range(n)]
    if targets is not None:
        for i, t in enumerate(targets):
            a = tok(t, add_special_tokens=False)["input_ids"]
            if add_eos and tok.eos_token_id is not None:
                a = a + [tok.eos_token_id]
            answer_rows[i] = a
    if max_length is not None:
        for i in range(n):
            room = max_length - len(prompt_rows[i]["input_ids"])
            if room < (1 if targets is not None else 0):
                raise ValueError(
                    f"prompt {i} is {len(prompt_rows[i]['input_ids'])} tokens, over max_length={max_length}"
                )
            answer_rows[i] = answer_rows[i][:room]

    total = max(len(r["input_ids"]) + len(a) for r, a in zip(prompt_rows, answer_rows, strict=True))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out_ids = torch.full((n, total), pad_id, dtype=ids.dtype)
    out_mask = torch.zeros((n, total), dtype=mask.dtype)
    labels = torch.full((n, total), IGNORE_INDEX, dtype=torch.long)
    extra = {k: torch.zeros((n, total), dtype=enc[k].dtype) for k in per_token}
    for i, (r, a) in enumerate(zip(prompt_rows, answer_rows, strict=True)):
        lp, la = len(r["input_ids"]), len(a)
        out_ids[i, :lp] = r["input_ids"]
        out_ids[i, lp : lp + la] = torch.tensor(a, dtype=ids.dtype)
        out_mask[i, : lp + la] = 1
        labels[i, lp : lp + la] = torch.tensor(a, dtype=torch.long)
        for k in per_token:
            extra[k][i, :lp] = r[k]
    batch = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask") and k not in per_token}
    batch.update(input_ids=out_ids, attention_mask=out_mask, **extra)
    if targets is not None:
        batch["labels"] = labels
    return dict(batch)


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def to_device(batch: dict, model: torch.nn.Module) -> dict:
    device, dtype = _model_device_dtype(model)
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------
# Training, scoring, generation
# ----------------------------------------------------------------------------------------------------


def train_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer) -> float:
    """One optimisation step on a batch from :func:`build_inputs` (with labels); returns the loss."""
    if "labels" not in batch:
        raise ValueError("batch has no labels: build it with targets")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = model(**to_device(batch, model), use_cache=False)
    loss = out.loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss: {loss.item()}")
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach().float().item())


@torch.no_grad()
def score_candidates(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    prompt: str,
    candidates: list[str],
    *,
    template: str = "Label: {}",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of each answer ``template.format(cand)`` given (image, prompt), without EOS.

    Returns (sum_loglik [L] float32, n_tokens [L] long); ``sum_loglik / n_tokens`` is the length-normalised
    score."""
    if not candidates:
        raise ValueError("no candidates")
    was_training = model.training
    model.eval()
    try:
        batch = build_inputs(
            processor,
            [image] * len(candidates),
            [prompt] * len(candidates),
            [template.format(c) for c in candidates],
            add_eos=False,
        )
        labels = batch.pop("labels")
        logits = model(**to_device(batch, model), use_cache=False).logits.float().cpu()
    finally:
        model.train(was_training)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    tok_lp = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    return tok_lp.sum(dim=1), valid.sum(dim=1)


@torch.no_grad()
def generate_answer(
    model: torch.nn.Module, processor: Any, image: Any, prompt: str, max_new_tokens: int = 64
) -> str:
    """Greedy answer for one (image, prompt), special tokens stripped."""
    tok = _tokenizer(processor)
    was_training = model.training
    model.eval()
    try:
        batch = to_device(build_inputs(processor, [image], [prompt]), model)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    finally:
        model.train(was_training)
    new = out[0, batch["input_ids"].shape[1] :]
    return tok.decode(new, skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------------


def save_adapter(model: torch.nn.Module, folder: str | Path) -> Path:
    """Save only the LoRA adapter (peft ``save_pretrained``)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError("save_adapter needs a peft model (load with lora.enabled=True)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    return folder


def load_adapter(base_cfg: HFVlmConfig, folder: str | Path, *, trainable: bool = False) -> tuple[Any, Any]:
    """Fresh base model from ``base_cfg`` with the saved adapter in ``folder`` on top."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter (adapter_config.json) in {folder}")
    base, processor = load_hf_vlm(base_cfg, apply_adapter=False)
    model = PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)
    model.to(_model_device_dtype(base)[0])
    return model, processor
