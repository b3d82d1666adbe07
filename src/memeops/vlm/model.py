"""The offline default VLM: a small LLaVA-style model built from configs and trained in the pipeline.

* vision: the pipeline's frozen CLIP image tower -- its cached image embedding (and the flipped
  one) -- mapped by a trained projector to ``prefix_tokens`` soft tokens (LLaVA's projector on a
  pooled CLIP feature, as ClipCap does);
* language: a Llama decoder (``transformers.LlamaForCausalLM``) built from a tiny config, with a
  BPE tokenizer trained on the train split's instructions and answers (English instructions,
  captions in their own language, so Chinese characters are units);
* LoRA: :func:`apply_lora` wraps the decoder with peft exactly as for a real checkpoint (rank 16,
  alpha 32, dropout 0.05, all linear layers), so the LoRA path runs on this model too.

``forward(image_emb [B, Di], input_ids [B, T], attention_mask [B, T], labels [B, T]) -> loss`` with
labels = -100 everywhere except the answer tokens (the prefix never counts).

Optional **label heads** (RA-HMD's classifier on the LM's hidden states): with
``TinyVLMConfig.label_tasks`` = ``{task: labels}``, one linear classifier per task reads the decoder's
last hidden state at the last prompt token (the position that predicts the answer's first token,
``Label``); :meth:`TinyVLM.prompt_state` and :meth:`TinyVLM.label_logits`. The heads are ordinary
parameters (``label_heads.<task>.*``), saved and loaded with the rest; a config without
``label_tasks`` (every folder written before the heads existed) builds none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
IGNORE = -100


class TinyVLMConfig(BaseModel):
    """Sizes of the offline default model; ``vocab_size`` and ``image_dim`` come from the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_dim: int = 256
    vocab_size: int = 4000
    prefix_tokens: int = Field(4, ge=1)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 512
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    # {task: candidate labels} of the label heads (empty: no heads, the model is the plain LM)
    label_tasks: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("label_tasks")
    @classmethod
    def _head_names(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for task, labels in value.items():
            if not task or "." in task:
                raise ValueError(f"label head task {task!r}: a module name needs no '.' and is not empty")
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise ValueError(f"label head task {task!r}: needs >= 2 distinct labels, got {labels}")
        return value


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000) -> Any:
    """A ``PreTrainedTokenizerFast`` (character-level BPE on Metaspace words, NFKC, no lowercasing).

    Special tokens: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3. Characters never seen map to
    ``<unk>``; every character seen is a unit, so Chinese text needs no segmenter.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    # Metaspace (SentencePiece-style "▁" for spaces) keeps the exact spacing through decode, so a
    # generated "Label: yes" comes back byte for byte (a strict parser depends on it).
    tok = Tokenizer(BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    # "\n" is always its own token: the end of "Label: <x>" is a token boundary, so candidate labels
    # are scored on exactly the tokens training saw.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK], show_progress=False)
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )


class TinyVLM(nn.Module):
    """Projector + Llama decoder; see the module docstring."""

    def __init__(self, cfg: TinyVLMConfig):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.cfg = cfg
        self.projector = nn.Sequential(
            nn.Linear(cfg.image_dim, cfg.hidden * cfg.prefix_tokens), nn.GELU(),
            nn.Linear(cfg.hidden * cfg.prefix_tokens, cfg.hidden * cfg.prefix_tokens),
        )  # fmt: skip
        self.decoder = LlamaForCausalLM(LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
            max_position_embeddings=cfg.max_positions, pad_token_id=cfg.pad_id, bos_token_id=cfg.bos_id,
            eos_token_id=cfg.eos_id, tie_word_embeddings=True,
        ))  # fmt: skip
        # Built after the decoder, so a model without heads draws exactly the same initial weights.
        self.label_heads = nn.ModuleDict(
            {task: nn.Linear(cfg.hidden, len(labels)) for task, labels in cfg.label_tasks.items()}
        )

    def prefix(self, image_emb: Tensor) -> Tensor:
        """``[B, Di]`` -> ``[B, P, H]`` soft visual tokens (inputs rescaled to unit variance)."""
        x = F.normalize(image_emb.float(), dim=-1) * image_emb.shape[-1] ** 0.5
        return self.projector(x).view(x.shape[0], self.cfg.prefix_tokens, self.cfg.hidden)

    def _inputs(self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        embeds = self.decoder.get_input_embeddings()(input_ids)
        prefix = self.prefix(image_emb).to(embeds.dtype)
        mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)
        return torch.cat([prefix, embeds], dim=1), mask

    def forward(
        self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None
    ) -> Any:
        embeds, mask = self._inputs(image_emb, input_ids, attention_mask)
        if labels is not None:
            labels = torch.cat(
                [labels.new_full((labels.shape[0], self.cfg.prefix_tokens), IGNORE), labels], dim=1
            )
        return self.decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    def answer_logits(
        self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[N, V]`` at the N answer positions only, their targets ``[N]`` and the ``[B, T]``
        answer mask. The vocabulary projection dominates a decoder this small; skipping it on the
        prompt (about 3/4 of the tokens) makes a training step ~1.5x faster than ``forward``."""
        logits, targets = self.answer_vocab_logits(self.token_hidden(image_emb, input_ids, attention_mask), labels)
        return logits, targets, labels != IGNORE

    def answer_vocab_logits(self, hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``[N, V]`` at the N answer positions of ``hidden`` (:meth:`token_hidden`'s states, whose
        prompt positions a label head may also read) and their targets ``[N]``."""
        answer = labels != IGNORE
        return self.vocab_logits(hidden[answer]), labels[answer]

    def hidden_states(self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, P + T, H]`` last decoder states (after the final norm) of prefix and tokens."""
        embeds, mask = self._inputs(image_emb, input_ids, attention_mask)
        # get_decoder: the bare LlamaModel, also through a peft wrapper (``.model`` there is the LM)
        return self.decoder.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    def token_hidden(self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, T, H]`` last decoder states, position t the one that predicts input token t (the
        vocabulary projection left to :meth:`vocab_logits`, for the positions that need it)."""
        return self.hidden_states(image_emb, input_ids, attention_mask)[:, self.cfg.prefix_tokens - 1 : -1]

    @staticmethod
    def answer_start(labels: Tensor) -> Tensor:
        """``[B]`` index of each row's first answer token (labels != -100); in :meth:`token_hidden`
        that index holds the state of the last PROMPT token, the one that predicts ``Label``."""
        answer = labels != IGNORE
        if not bool(answer.any(1).all()):
            raise ValueError("every row needs an answer token to place the label head")
        return answer.long().argmax(1)

    def prompt_state(self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, H]`` the state of each row's last attended token, for right-padded PROMPT-only rows
        (``encode_pairs(..., answers=None)``): the same position :meth:`answer_start` picks in training."""
        hidden = self.hidden_states(image_emb, input_ids, attention_mask)
        last = self.cfg.prefix_tokens + attention_mask.long().sum(1) - 1
        return hidden[torch.arange(len(input_ids)), last]

    def label_logits(self, state: Tensor, tasks: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
        """``{task: (rows [n], logits [n, L_task])}``: each row's state ``[B, H]`` through its task's head."""
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            if task not in self.label_heads:
                raise KeyError(f"no label head for task {task!r} (heads: {sorted(self.label_heads)})")
            groups.setdefault(task, []).append(i)
        out = {}
        for task, idx in groups.items():
            rows = torch.tensor(idx, dtype=torch.long, device=state.device)
            out[task] = (rows, self.label_heads[task](state[rows].float()))
        return out

    def vocab_logits(self, hidden: Tensor) -> Tensor:
        """``[..., V]`` float logits of decoder states."""
        return self.decoder.get_output_embeddings()(hidden).float()

    @torch.no_grad()
    def token_logprobs(self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, T]`` log p(token t | prefix, tokens < t); position 0 gets 0."""
        embeds, mask = self._inputs(image_emb, input_ids, attention_mask)
        logits = self.decoder(inputs_embeds=embeds, attention_mask=mask).logits.float()
        logp = logits[:, self.cfg.prefix_tokens - 1 : -1].log_softmax(-1)  # predicts tokens 0..T-1
        out = logp.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)
        out[:, 0] = 0.0
        return out

    @torch.no_grad()
    def generate(
        self, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int = 48
    ) -> Tensor:
        """Greedy answers ``[B, <= max_new_tokens]`` after left-padded prompts."""
        embeds, mask = self._inputs(image_emb, input_ids, attention_mask)
        return self.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=self.cfg.pad_id, eos_token_id=self.cfg.eos_id)  # fmt: skip


def apply_lora(model: TinyVLM, rank: int = 16, alpha: int = 32, dropout: float = 0.05) -> TinyVLM:
    """Wrap the decoder's linear layers with LoRA (peft), as for a real checkpoint; the projector
    stays fully trainable (it is new), the base decoder weights are frozen."""
    from peft import LoraConfig, get_peft_model

    model.decoder = get_peft_model(model.decoder, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                             target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    return model


def save_vlm(model: TinyVLM, tokenizer: Any, folder: Path) -> Path:
    """``config.json`` + ``model.safetensors`` + the tokenizer files."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vlm_config.json").write_text(model.cfg.model_dump_json(indent=2), encoding="utf-8")
    save_model(model, str(folder / "vlm.safetensors"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder


def load_vlm(folder: Path) -> tuple[TinyVLM, Any]:
    from safetensors.torch import load_model
    from transformers import PreTrainedTokenizerFast

    cfg = TinyVLMConfig.model_validate(json.loads((folder / "vlm_config.json").read_text(encoding="utf-8")))
    model = TinyVLM(cfg)
    load_model(model, str(folder / "vlm.safetensors"), strict=True)
    return model.eval(), PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer"))


def encode_pairs(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str] | None, max_length: int
) -> dict[str, Tensor]:
    """Right-padded ``<s> prompt answer </s>`` ids with labels on the answer (and ``</s>``) only.

    The prompt is truncated from the left when the pair exceeds ``max_length`` (the answer and the
    end of the prompt -- the meme text and the format line -- are what matter).
    """
    rows, labels = [], []
    # one batch call per side (the same ids as one call per text, without a Python round trip each:
    # per-text calls were ~8% of the VLM's fit on 2 CPU cores)
    texts = [prompt + "\n" for prompt in prompts]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"] if answers else []
    for i, p in enumerate(prompt_ids):
        a = answer_ids[i] + [tokenizer.eos_token_id] if answers else []
        room = max_length - 1 - len(a)
        p = p[-room:] if room > 0 else []
        ids = [tokenizer.bos_token_id, *p, *a][:max_length]
        rows.append(ids)
        labels.append([IGNORE] * (1 + len(p)) + a[: max(0, max_length - 1 - len(p))])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long),
        "attention_mask": torch.tensor(
            [[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long
        ),
        "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels], dtype=torch.long),
    }
