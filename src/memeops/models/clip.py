"""Frozen CLIP encoders for the feature cache: config, offline-only weight resolution, a small wrapper.

No CLIP weights can be downloaded here, so there are three ways to get an encoder:

* ``weights``: a local ``.safetensors`` / ``.pt`` / ``.bin`` state dict, e.g. the ``memeops-tiny``
  model written by the ``pretrain_clip`` stage (``training/clip_pretrain.py``) or a real CLIP
  checkpoint saved from open_clip;
* ``pretrained``: an open_clip pretrained tag ("openai", "laion2b_s34b_b79k", ...), used **only if its
  file is already in a local cache**. We look the file up ourselves and fail in milliseconds
  otherwise; letting open_clip try would spend ~45 s in hub retries before failing;
* neither: random init, only when the caller passes ``allow_random=True`` (tests, smoke runs),
  because random features silently make every downstream number meaningless.

``memeops-tiny`` is built directly as ``open_clip.CLIP(embed_dim, vision_cfg, text_cfg)`` (no
global ``add_model_config`` registration, so nothing leaks into other users of open_clip). Its text
tower keeps open_clip's default ``pool_type="argmax"``: the corpus tokenizer gives ``<eot>`` the
highest id, so argmax finds the end of text (see ``text_tokenizer.py``).

``ClipEncoder.spec_key`` names the feature-cache folder: a hash of everything that changes the
embeddings (config minus file paths, plus sha256 of the weights and tokenizer files), so swapping
a checkpoint in place can never serve stale features, and moving a file never invalidates them.

``text_encoder`` (``encoders.text``, off by default): captions are embedded by a pretrained sentence
encoder (:mod:`memeops.models.sentence_encoder`) instead of the CLIP text tower, while images keep
the CLIP image tower. Its identity (content hash, max length, pooling) joins the spec key; the
text embedding then has the sentence encoder's width (:attr:`ClipEncoder.text_dim`, 384 for
all-MiniLM-L6-v2), which may differ from the image width (:attr:`ClipEncoder.dim`). Left unset, the
field is absent from every dump, so the default encoder's config files and spec key are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from torch import Tensor, nn

from memeops.config.encoders import SentenceEncoderConfig
from memeops.models.sentence_encoder import SentenceEncoder, load_sentence_encoder
from memeops.models.text_tokenizer import CorpusTokenizer
from memeops.threads import torch_threads  # noqa: F401  (re-exported: feature extraction, pretraining)

TINY_ARCH = "memeops-tiny"
OPEN_CLIP_VOCAB = 49408  # open_clip's SimpleTokenizer
WEIGHTS_HINT = "run the pretrain_clip stage or set encoders.clip.weights to a local file"
PATH_FIELDS = frozenset({"weights", "tokenizer_path", "cache_dir"})  # not hashed: content is


class MaxPoolConvNet(nn.Module):
    """A small VGG-style image tower: ``[B, 3, S, S] -> [B, embed_dim]``.

    Stride-2 conv + 2x2 max-pool stem (S/4, as ResNet stems), then ``stages - 1`` stages of (3x3 conv, BN, ReLU, 2x2 max-pool), then the
    global max *and* mean of the last feature map, concatenated and projected. The global max lets
    a small object anywhere in the image light up a channel: the property SynthMeme's key objects
    (and real memes' small symbols) need, and the one attention-pooled towers were slow to learn here.
    """

    def __init__(self, embed_dim: int, image_size: int, width: int = 32, stages: int = 4):
        super().__init__()
        self.image_size = (image_size, image_size)
        widths = [width * 2**i for i in range(stages)]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), nn.MaxPool2d(2)]  # fmt: skip
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]  # fmt: skip
        self.trunk = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * widths[-1], embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        f = self.trunk(x)  # [B, C, S / 2^(stages+1), same]
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)  # [B, 2C]
        return self.proj(pooled)

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:  # open_clip API
        self.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:  # open_clip API; nothing to do
        pass


class ClipEncoderConfig(BaseModel):
    """Which CLIP to use and where its weights come from; the tiny arch's sizes.

    The size fields only shape ``memeops-tiny``; for an open_clip arch its own config rules, except
    that a ``corpus`` tokenizer resizes the text tower's vocabulary and ``context_length``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = TINY_ARCH
    pretrained: str | None = None  # open_clip tag, local cache only
    weights: str | None = None  # local state-dict file
    tokenizer: Literal["corpus", "open_clip"] = "corpus"
    tokenizer_path: str | None = None  # corpus tokenizer.json; default: next to ``weights``
    cache_dir: str | None = None  # extra place to look for pretrained-tag files
    init_seed: int = 0  # random init only (allow_random)

    embed_dim: int = 256
    image_size: int = 128
    # Image tower of memeops-tiny: "vit" (open_clip VisionTransformer), "resnet" (open_clip's
    # ModifiedResNet, attention-pooled) or "convnet" (:class:`MaxPoolConvNet`, a small VGG-style CNN
    # with global max+avg pooling). See the module docstring for why the default is "convnet".
    vision_kind: Literal["vit", "resnet", "convnet"] = "convnet"
    vision_resnet_layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    patch_size: int = 16
    vision_width: int = 32  # convnet: first-stage channels (doubling per stage); vit/resnet: width
    vision_layers: int = 4
    vision_heads: int = 3
    text_width: int = 192
    text_layers: int = 4
    text_heads: int = 3
    context_length: int = 48
    vocab_size: int | None = None  # None: taken from the tokenizer
    # Captions by a sentence encoder instead of the text tower (encoders.text; None: the CLIP tower).
    text_encoder: SentenceEncoderConfig | None = None

    @model_serializer(mode="wrap")
    def _no_unset_text_encoder(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``text_encoder: null`` out of every dump: the default encoder's clip_config.json,
        spec key and run fingerprints stay what they were before the field existed."""
        data = handler(self)
        if isinstance(data, dict) and data.get("text_encoder") is None:
            data.pop("text_encoder", None)
        return data

    @field_validator("text_encoder")
    @classmethod
    def _clip_tower_is_none(cls, value: SentenceEncoderConfig | None) -> SentenceEncoderConfig | None:
        """``kind: clip`` means the CLIP text tower: the same encoder (and spec key) as no entry."""
        return value if value is not None and value.enabled else None

    @model_validator(mode="after")
    def _check(self) -> ClipEncoderConfig:
        if self.pretrained and self.weights:
            raise ValueError("set either pretrained (an open_clip tag) or weights (a local file), not both")
        if self.pretrained and self.arch == TINY_ARCH:
            raise ValueError(f"{TINY_ARCH} has no open_clip pretrained tags; use weights=<local file>")
        if self.pretrained and self.tokenizer == "corpus":
            raise ValueError("pretrained open_clip tags come with open_clip's tokenizer: set tokenizer='open_clip'")
        if self.vision_kind == "vit" and self.vision_width % self.vision_heads or self.text_width % self.text_heads:
            raise ValueError("vision_width / text_width must be divisible by their head counts")
        return self


# --- tokenizers ------------------------------------------------------------------------------------


Tokenize = Callable[[Sequence[str]], Tensor]  # texts -> LongTensor[B, context_length]


def _corpus_tokenizer_path(cfg: ClipEncoderConfig) -> Path:
    if cfg.tokenizer_path:
        return Path(cfg.tokenizer_path)
    if cfg.weights:
        return Path(cfg.weights).parent / "tokenizer.json"
    raise ValueError("tokenizer='corpus' needs tokenizer_path (the pretrain_clip stage writes tokenizer.json)")


def load_tokenizer(cfg: ClipEncoderConfig) -> tuple[Tokenize, int, str]:
    """(tokenize, vocab size, identity for the spec key) for the configured tokenizer."""
    if cfg.tokenizer == "corpus":
        path = _corpus_tokenizer_path(cfg)
        tok = CorpusTokenizer.load(path, cfg.context_length)
        return (lambda texts: tok(list(texts), cfg.context_length)), tok.vocab_size, file_sha256(path)
    # open_clip is imported where a model or an open_clip tokenizer is built, not at module top: its
    # __init__ imports every tower (CoCa, Hugging Face, timm; ~2-4 s), and the config and the corpus
    # tokenizer (what most importers of this module use) need none of it.
    import open_clip

    if cfg.arch == TINY_ARCH:
        simple = open_clip.SimpleTokenizer(context_length=cfg.context_length)
        return (lambda texts: simple(list(texts))), OPEN_CLIP_VOCAB, "open_clip:simple"
    oc_tok = open_clip.get_tokenizer(cfg.arch)
    vocab = int(_open_clip_model_cfg(cfg.arch)["text_cfg"].get("vocab_size", OPEN_CLIP_VOCAB))
    return (lambda texts: oc_tok(list(texts))), vocab, f"open_clip:{cfg.arch}"


# --- model building --------------------------------------------------------------------------------


def _open_clip_model_cfg(arch: str) -> dict[str, Any]:
    import open_clip  # heavy: see load_tokenizer

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(f"unknown CLIP arch {arch!r}: use {TINY_ARCH!r} or a name from open_clip.list_models()")
    return model_cfg


def tiny_model_cfg(cfg: ClipEncoderConfig, vocab_size: int) -> dict[str, Any]:
    """open_clip ``CLIP(**kwargs)`` arguments for ``memeops-tiny``."""
    if cfg.vision_kind == "convnet":  # placeholder tower, replaced in build_clip_model
        vision_cfg: dict[str, Any] = {"image_size": cfg.image_size, "width": 64, "layers": 1, "patch_size": 32,
                                      "head_width": 64}  # fmt: skip
    elif cfg.vision_kind == "resnet":
        # a tuple of 4 stage depths makes open_clip build ModifiedResNet; final channels = 32 * width
        vision_cfg = {"image_size": cfg.image_size, "width": cfg.vision_width, "layers": list(cfg.vision_resnet_layers)}
    else:
        vision_cfg = {
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "width": cfg.vision_width,
            "layers": cfg.vision_layers,
            "head_width": cfg.vision_width // cfg.vision_heads,
        }
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": vision_cfg,
        "text_cfg": {
            "context_length": cfg.context_length,
            "vocab_size": vocab_size,
            "width": cfg.text_width,
            "heads": cfg.text_heads,
            "layers": cfg.text_layers,
            "pad_id": 0,
            "pool_type": "argmax",  # <eot> has the highest id in both tokenizers
        },
    }


def build_clip_model(cfg: ClipEncoderConfig, vocab_size: int) -> nn.Module:
    """An untrained open_clip model for ``cfg`` (seeded by ``cfg.init_seed``), in train mode."""
    import open_clip  # heavy: see load_tokenizer

    if cfg.vocab_size is not None and cfg.vocab_size != vocab_size:
        raise ValueError(f"config vocab_size {cfg.vocab_size} != tokenizer vocab size {vocab_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        if cfg.arch == TINY_ARCH:
            model = open_clip.CLIP(**tiny_model_cfg(cfg, vocab_size))
            if cfg.vision_kind == "convnet":  # open_clip's CLIP with our image tower (same API)
                model.visual = MaxPoolConvNet(cfg.embed_dim, cfg.image_size, cfg.vision_width)
            return model
        overrides: dict[str, Any] = {}
        model_cfg = _open_clip_model_cfg(cfg.arch)
        if cfg.tokenizer == "corpus":
            text_cfg = dict(model_cfg["text_cfg"])
            if "hf_model_name" in text_cfg:
                raise ValueError(f"{cfg.arch} has a Hugging Face text tower: use tokenizer='open_clip'")
            text_cfg.update(vocab_size=vocab_size, context_length=cfg.context_length)
            overrides["text_cfg"] = text_cfg
        return open_clip.create_model(cfg.arch, pretrained=None, **overrides)


@contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns "Model initialized randomly" on every build; misleading when weights follow."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """Accept a bare state dict or the usual wrappers ({"state_dict": ...}, {"model": ...}, "module.")."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return {(k.removeprefix("module.")): v for k, v in obj.items()}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from a local weights file; safetensors or a torch pickle (weights_only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file {path} not found: {WEIGHTS_HINT}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _unwrap_state_dict(load_file(str(path), device="cpu"))
    if path.suffix in (".pt", ".pth", ".bin"):
        return _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    raise ValueError(f"CLIP weights {path}: unsupported suffix {path.suffix!r} (.safetensors, .pt or .bin)")


def load_weights_into(model: nn.Module, path: str | Path) -> None:
    """Strict load; a mismatch is reported in one line (counts and a few names), not a wall of keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        raise ValueError(
            f"CLIP weights {path} do not fit the configured model: {len(missing)} missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(shape)} shape mismatches {shape[:3]} "
            "(check arch / tiny sizes / tokenizer against the checkpoint's clip_config.json)"
        )
    model.load_state_dict(state, strict=True)


# --- pretrained tags from the local cache only -----------------------------------------------------


def _hf_names(filename: str) -> list[str]:
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if not filename:
        return [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _lookup_dirs(cfg_dir: str | None) -> list[str]:
    dirs = [cfg_dir, os.environ.get("OPEN_CLIP_CACHE_DIR")]
    return [d for d in dirs if d]


def resolve_pretrained_file(arch: str, tag: str, cache_dir: str | None = None) -> Path:
    """The cached file for an open_clip (arch, tag), looked up without any network access.

    Checks, in order: the Hugging Face hub cache (``cache_dir``, ``$OPEN_CLIP_CACHE_DIR``, then the
    default ``$HF_HUB_CACHE``) and open_clip's URL cache (``cache_dir``, ``$OPEN_CLIP_CACHE_DIR``,
    ``~/.cache/clip``). Raises a one-line FileNotFoundError otherwise.
    """
    import open_clip  # heavy: see load_tokenizer

    pcfg = open_clip.get_pretrained_cfg(arch, tag)
    if not pcfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {arch!r} (known: {known})")
    looked: list[str] = []
    if pcfg.get("hf_hub"):
        repo, filename = os.path.split(pcfg["hf_hub"])
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip's extras
            try_to_load_from_cache = None
        for d in [*_lookup_dirs(cache_dir), None] if try_to_load_from_cache else []:
            for name in _hf_names(filename):
                hit = try_to_load_from_cache(repo, name, cache_dir=d)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
            looked.append(f"hf:{repo} in {d or 'HF_HUB_CACHE'}")
    if pcfg.get("url"):
        name = os.path.basename(pcfg["url"])
        for d in [*_lookup_dirs(cache_dir), os.path.expanduser("~/.cache/clip")]:
            if (Path(d) / name).is_file():
                return Path(d) / name
            looked.append(str(Path(d) / name))
    raise FileNotFoundError(
        f"open_clip weights {arch}/{tag} are not in the local cache (looked at: {'; '.join(looked)}); "
        f"downloads are off: {WEIGHTS_HINT}"
    )


def _load_pretrained_tag(cfg: ClipEncoderConfig) -> tuple[nn.Module, Path]:
    import open_clip  # heavy: see load_tokenizer

    path = resolve_pretrained_file(cfg.arch, cfg.pretrained or "", cfg.cache_dir)
    pcfg = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained or "")
    preprocess = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    model = open_clip.create_model(
        cfg.arch, pretrained=str(path), force_quick_gelu=bool(pcfg.get("quick_gelu", False)),
        force_preprocess_cfg=preprocess,
    )  # fmt: skip
    return model, path





# --- the encoder wrapper ---------------------------------------------------------------------------


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_spec_key(cfg: ClipEncoderConfig, identity: dict[str, Any]) -> str:
    """``<arch>-<16 hex>``: hash of the config (paths excluded) and the content identities.

    A text encoder counts by its identity only (content hash, resolved max length and pooling), not
    by how it was named: the same weights from the package or copied to a path give the same key."""
    payload = {"config": cfg.model_dump(exclude={*PATH_FIELDS, "text_encoder"}), **identity}
    if identity.get("init") != "random":
        payload["config"].pop("init_seed")
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', cfg.arch)}-{digest}"


def eval_transform(model: nn.Module, image_size: int) -> Callable[[Image.Image], Tensor]:
    """open_clip's val transform for ``model`` (its preprocess_cfg, else CLIP defaults at ``image_size``)."""
    import open_clip  # heavy: see load_tokenizer

    pp = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    return open_clip.image_transform(
        pp.get("size", image_size), is_train=False, mean=pp.get("mean"), std=pp.get("std"),
        resize_mode=pp.get("resize_mode"), interpolation=pp.get("interpolation"),
    )  # fmt: skip


def _trim_ok(model: nn.Module) -> bool:
    """Whether :func:`encode_text` may drop trailing padding: an open_clip ``CLIP`` text tower with
    a causal mask and end-of-text pooling (outputs up to <eot> never see later positions)."""
    import open_clip  # heavy: see load_tokenizer

    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and isinstance(getattr(model, "attn_mask", None), Tensor)
        and isinstance(model.text_projection, (Tensor, nn.Parameter))
    )


def encode_text(model: nn.Module, tokens: Tensor, normalize: bool = True) -> Tensor:
    """``LongTensor[B, C] -> [B, D]``, same result as ``model.encode_text`` but cheaper.

    Captions use ~15-30 of the 48 positions; with a causal mask the states up to the pooled <eot>
    do not depend on the padding after it, so we run the transformer on the first L positions only
    (L = last pooled position in the batch + 1). Roughly halves text-tower cost in training and
    extraction. Falls back to ``model.encode_text`` for any other text tower.
    """
    if not _trim_ok(model):
        return model.encode_text(tokens, normalize=normalize)
    if model.text_pool_type == "argmax":
        last = tokens.argmax(dim=-1)
    else:
        last = (tokens == model.text_eos_id).int().argmax(dim=-1)
    n = int(last.max()) + 1
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), last] @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def width_entries(dim: int, text_dim: int | None) -> dict[str, int]:
    """``{"dim": dim}`` and ``text_dim`` when given and different (see :attr:`ClipEncoder.widths`)."""
    return {"dim": dim, **({"text_dim": text_dim} if text_dim is not None and text_dim != dim else {})}


class ClipEncoder:
    """A frozen CLIP in eval mode: PIL images / texts -> L2-normalised float32 rows on CPU.

    Images are ``[B, dim]`` (the CLIP width); texts ``[B, text_dim]``: ``dim`` again through the CLIP
    text tower, the sentence encoder's width when ``text_encoder`` is given (``encoders.text``).
    """

    def __init__(
        self, model: nn.Module, tokenize: Tokenize, preprocess: Callable[[Image.Image], Tensor],
        spec_key: str, config: ClipEncoderConfig, device: str | torch.device = "cpu",
        text_encoder: SentenceEncoder | None = None,
    ):  # fmt: skip
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenize = tokenize
        self.preprocess = preprocess
        self.spec_key = spec_key
        self.config = config
        self.text_encoder = text_encoder
        self.dim = int(self.encode_clip_texts([""]).shape[-1])
        self.text_dim = text_encoder.dim if text_encoder is not None else self.dim

    def image_tensor(self, images: Sequence[Image.Image]) -> Tensor:
        """``[B, 3, S, S]`` preprocessed (open_clip's val transform)."""
        return torch.stack([self.preprocess(im.convert("RGB")) for im in images])

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image] | Tensor) -> Tensor:
        """PIL images, or an already preprocessed ``[B, 3, S, S]`` tensor -> ``[B, dim]``."""
        x = images if isinstance(images, Tensor) else self.image_tensor(images)
        out = self.model.encode_image(x.to(self.device), normalize=True)
        return out.float().cpu()

    @torch.inference_mode()
    def encode_clip_texts(self, texts: Sequence[str]) -> Tensor:
        """Texts -> ``[B, dim]`` through the CLIP text tower, whatever ``encoders.text`` says."""
        tokens = self.tokenize(list(texts)).to(self.device)
        return encode_text(self.model, tokens, normalize=True).float().cpu()

    @property
    def widths(self) -> dict[str, int]:
        """``{"dim": image width}``, plus ``text_dim`` only when the caption width differs (a sentence
        encoder): how the feature cache's files and a packed model folder record them, so a cache
        whose two widths agree keeps the files it always had."""
        return width_entries(self.dim, self.text_dim)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Texts -> ``[B, text_dim]``: the caption embedding of the feature cache (the sentence
        encoder when one is configured, else the CLIP text tower)."""
        if self.text_encoder is not None:
            return self.text_encoder.encode(list(texts))
        return self.encode_clip_texts(texts)


PIPELINE_CLIP_CONFIG = Path("models/clip/clip_config.json")  # written by stage pretrain_clip


def load_encoder_config(path: str | Path) -> ClipEncoderConfig:
    """A ``clip_config.json`` whose relative ``weights`` / ``tokenizer_path`` name files in its own
    folder (as pretrain_clip writes them), with those paths joined to the folder; absolute ones kept."""
    path = Path(path)
    cfg = ClipEncoderConfig.model_validate_json(path.read_text(encoding="utf-8"))
    files = {k: str(path.parent / v) for k in ("weights", "tokenizer_path") if (v := getattr(cfg, k))}
    return cfg.model_copy(update=files)


def resolve_encoder_config(cfg: ClipEncoderConfig, pipeline_config: Path = PIPELINE_CLIP_CONFIG) -> ClipEncoderConfig:
    """The user's encoder when ``cfg`` names weights or a pretrained tag, else the in-pipeline one."""
    if cfg.weights or cfg.pretrained:
        return cfg
    if not Path(pipeline_config).is_file():
        raise FileNotFoundError(f"{pipeline_config}: no encoder (run stage pretrain_clip or set encoders.clip.weights)")
    return load_encoder_config(pipeline_config)


def load_clip(
    cfg: ClipEncoderConfig, *, allow_random: bool = False, device: str | torch.device = "cpu"
) -> ClipEncoder:
    """Build the configured encoder from local files only (see module docstring for the rules)."""
    if cfg.weights and not Path(cfg.weights).is_file():
        raise FileNotFoundError(f"CLIP weights file {cfg.weights} not found: {WEIGHTS_HINT}")
    if not (cfg.weights or cfg.pretrained or allow_random):
        raise ValueError(f"no CLIP weights configured (encoders.clip.weights / pretrained): {WEIGHTS_HINT}")
    tokenize, vocab_size, tok_id = load_tokenizer(cfg)
    identity: dict[str, Any] = {"tokenizer": tok_id, "vocab_size": vocab_size}
    if cfg.pretrained:
        if cfg.tokenizer == "corpus":  # pragma: no cover - rejected by the config validator
            raise ValueError("pretrained tags need tokenizer='open_clip'")
        model, path = _load_pretrained_tag(cfg)
        identity.update(init="pretrained", weights_sha256=file_sha256(path))
    else:
        with _quiet_random_init_warning() if cfg.weights else nullcontext():
            model = build_clip_model(cfg, vocab_size)
        if cfg.weights:
            load_weights_into(model, cfg.weights)
            identity.update(init="weights", weights_sha256=file_sha256(cfg.weights))
        else:
            identity.update(init="random")
    text_encoder = load_sentence_encoder(cfg.text_encoder, device) if cfg.text_encoder else None
    if text_encoder is not None:
        identity["text_encoder"] = text_encoder.identity
    preprocess = eval_transform(model, cfg.image_size)
    return ClipEncoder(model, tokenize, preprocess, make_spec_key(cfg, identity), cfg, device, text_encoder)


def with_text_encoder(cfg: ClipEncoderConfig, text: SentenceEncoderConfig) -> ClipEncoderConfig:
    """``cfg`` with ``encoders.text`` in it when that names a sentence encoder; else ``cfg`` as it is
    (its captions keep the CLIP text tower)."""
    return cfg.model_copy(update={"text_encoder": text}) if text.enabled else cfg
