"""A bilingual (English + Chinese) subword tokenizer trained on the meme corpus itself.

Why not open_clip's tokenizer: its byte-level BPE was learnt on English web text, so a Chinese
caption falls apart into UTF-8 byte pieces (three tokens per character, no shared units), and
with a 48-token context a ~30-character Chinese caption does not even fit. Training our own
vocabulary on the TRAIN captions fixes both and keeps the text tower's embedding table small.

The exact choice (see :func:`build_tokenizer`):

* model: character-level **BPE** (``tokenizers.models.BPE``, not byte-level) with ``<unk>``;
  its initial alphabet is every character seen in training, so each Chinese character is a unit
  from the start, and merges then learn frequent Chinese words ("我们", "阳光") and English
  subwords alike. Characters never seen in training map to ``<unk>`` instead of byte soup.
* normaliser: NFKC (full-width punctuation "，？：" → ",?:" and full-width Latin → ASCII) then
  lowercase, as CLIP does.
* pre-tokeniser: ``Whitespace`` (``\\w+|[^\\w\\s]+``). Chinese characters are ``\\w``, so a run of
  Chinese between spaces/punctuation stays one "word" inside which BPE may merge adjacent
  characters; it never merges across a space or across a punctuation boundary. No word
  segmenter (jieba) is needed: BPE's merges play that role, driven by corpus frequency.
* special tokens: ``<pad>`` = 0, ``<sot>`` = 1, ``<unk>`` = 2 come first; ``<eot>`` is added
  *after* training so it gets the **highest id** (``vocab_size - 1``). open_clip's
  ``TextTransformer`` pools with ``pool_type="argmax"`` by default, i.e. it takes the position of
  the largest token id as the end of text; with ``<eot>`` highest (and ``<pad>`` = 0) that is
  exactly the EOT position, so any open_clip text tower works with this tokenizer unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from torch import Tensor

PAD, SOT, UNK, EOT = "<pad>", "<sot>", "<unk>", "<eot>"
DEFAULT_VOCAB_SIZE = 4000


def build_tokenizer() -> Tokenizer:
    """An untrained character-level BPE with the normaliser and pre-tokeniser described above."""
    tok = Tokenizer(BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


class CorpusTokenizer:
    """Wraps a trained ``tokenizers.Tokenizer``; ``__call__`` gives open_clip-style token tensors.

    ``tok(texts, context_length) -> LongTensor[B, context_length]``: ``<sot> ids... <eot> <pad>...``,
    the ids truncated so ``<eot>`` always fits (as open_clip's own tokenizer does).
    """

    def __init__(self, tokenizer: Tokenizer, context_length: int = 48):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id = self._id(PAD)
        self.sot_id = self._id(SOT)
        self.unk_id = self._id(UNK)
        self.eot_id = self._id(EOT)
        if self.eot_id != self.vocab_size - 1:
            raise ValueError(f"<eot> must have the highest id ({self.vocab_size - 1}), got {self.eot_id}")

    def _id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"tokenizer has no special token {token!r}")
        return idx

    @property
    def vocab_size(self) -> int:
        """Embedding rows the text tower needs (special and added tokens included)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, context_length: int = 48
    ) -> CorpusTokenizer:
        """Learn the vocabulary from ``texts`` (pass TRAIN-split texts only: no val/test leakage).

        ``vocab_size`` counts every id, ``<eot>`` included. A small corpus may stop short of it
        (BPE runs out of pairs to merge); the real size is :attr:`vocab_size`.
        """
        if vocab_size < 8:
            raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
        tok = build_tokenizer()
        trainer = BpeTrainer(vocab_size=vocab_size - 1, special_tokens=[PAD, SOT, UNK], show_progress=False)
        tok.train_from_iterator((t for t in texts if t), trainer=trainer)
        tok.add_special_tokens([EOT])  # appended after training -> highest id
        return cls(tok, context_length)

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Subword ids per text, without special tokens."""
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        """``LongTensor[B, context_length]`` of ``<sot> ids <eot> <pad>*``."""
        if isinstance(texts, str):
            texts = [texts]
        n_ctx = context_length or self.context_length
        out = torch.full((len(texts), n_ctx), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(self.encode_ids(texts)):
            seq = [self.sot_id, *ids[: n_ctx - 2], self.eot_id]
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (the HF tokenizers format; context length kept in a sidecar key)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(self.tokenizer.to_str())
        data["memeops"] = {"context_length": self.context_length}
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, context_length: int | None = None) -> CorpusTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found (the pretrain_clip stage writes it)")
        data = json.loads(path.read_text(encoding="utf-8"))
        extra = data.pop("memeops", {})
        tok = Tokenizer.from_str(json.dumps(data))
        return cls(tok, context_length or int(extra.get("context_length", 48)))
