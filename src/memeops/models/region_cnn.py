"""The frozen VGG-style CNN that encodes region crops for MGMCF, patch by patch.

MGMCF's object-level semantic mining resizes each region crop, splits it into g x g patches and
encodes every patch with a VGG network. As in the released code (pre-extracted VGG features),
the CNN is frozen and its features are cached (stage ``region_features``); MGMCF trains what sits
on top (positional and box embeddings, CAP blocks, heads).

Two backends:

* ``clip_tower`` (offline default): the image tower of the pipeline's CLIP -- with the default
  encoder a narrow VGG-style convnet (:class:`memeops.models.clip.MaxPoolConvNet`) trained from
  scratch by stage ``pretrain_clip`` with object tags -- applied to each patch resized to
  ``patch_size``. Output: its L2-normalised embedding ``[embed_dim]``.
* ``vgg16`` (real data): torchvision's VGG16 convolutional trunk with weights from a local file
  (a torchvision state dict, full or ``features.*`` only), ImageNet normalisation; output: global
  max and mean of the last conv map ``[1024]``.

``encode(crops uint8 [N, S, S, 3]) -> float32 [N, g*g, C]`` (patches row-major).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_OPENAI_MEAN, _OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class RegionCNNConfig(BaseModel):
    """Which CNN encodes region patches, and how crops become patches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["clip_tower", "vgg16"] = "clip_tower"
    weights: str | None = None  # vgg16: local torchvision VGG16 state dict
    patch_grid: int = Field(1, ge=1)  # g: each crop split into g x g patches
    patch_size: int = Field(32, ge=8)  # every patch is resized to this before the CNN
    batch_size: int = 512

    @model_validator(mode="after")
    def _check(self) -> RegionCNNConfig:
        if self.kind == "vgg16" and self.patch_size < 32:
            raise ValueError("vgg16 needs patch_size >= 32 (five 2x2 pools)")
        return self


def split_patches(crops: Tensor, grid: int, patch_size: int) -> Tensor:
    """``uint8 [N, S, S, 3]`` -> ``float [N * g * g, 3, P, P]`` in [0, 1], patches row-major.

    S need not divide by g: the crop is first resized to ``g * P``.
    """
    n = crops.shape[0]
    x = crops.permute(0, 3, 1, 2).float().div(255.0)  # [N, 3, S, S]
    side = grid * patch_size
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    x = x.reshape(n, 3, grid, patch_size, grid, patch_size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n * grid * grid, 3, patch_size, patch_size)


def _vgg16_features_state(path: str | Path) -> dict[str, Tensor]:
    """``features.*`` tensors of a torchvision VGG16 state-dict file, keys without the prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights {path} not found (region_cnn.weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise ValueError(f"{path} holds no 'features.*' tensors: expected a torchvision VGG16 state dict")
    return features


class VGG16Trunk(nn.Module):
    """torchvision VGG16 ``features`` -> global max + mean: ``[N, 3, P, P]`` in [0, 1] -> ``[N, 1024]``."""

    out_dim = 1024

    def __init__(self, weights: str | None):
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16(weights=None).features
        if weights:
            self.features.load_state_dict(_vgg16_features_state(weights), strict=True)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features((x - self.mean) / self.std)
        return torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)


class ClipTower(nn.Module):
    """A CLIP image tower on patches: ``[N, 3, P, P]`` in [0, 1] -> L2-normalised ``[N, D]``."""

    def __init__(self, visual: nn.Module, image_size: int, mean: tuple, std: tuple):
        super().__init__()
        self.visual = visual
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.out_dim = int(self.forward(torch.zeros(1, 3, image_size, image_size)).shape[-1])

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        # Convolutional towers take any size; transformers only their own.
        if not _is_convolutional(self.visual) and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return F.normalize(self.visual((x - self.mean) / self.std).float(), dim=-1)


def _is_convolutional(visual: nn.Module) -> bool:
    from memeops.models.clip import MaxPoolConvNet

    return isinstance(visual, MaxPoolConvNet)


class RegionCNN:
    """A frozen patch encoder in eval mode (see module docstring)."""

    def __init__(self, net: nn.Module, cfg: RegionCNNConfig, identity: dict, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.cfg = cfg
        self.dim = int(net.out_dim)
        payload = {"config": cfg.model_dump(exclude={"weights", "batch_size"}), **identity}
        self.spec_key = f"{cfg.kind}-{hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]}"

    @property
    def patches_per_region(self) -> int:
        return self.cfg.patch_grid**2

    @torch.inference_mode()
    def encode(self, crops: Tensor) -> Tensor:
        """``uint8 [N, S, S, 3]`` -> ``float32 [N, g*g, C]`` on CPU."""
        n = crops.shape[0]
        g = self.cfg.patch_grid
        if n == 0:
            return torch.zeros(0, g * g, self.dim)
        out = []
        for start in range(0, n, self.cfg.batch_size):
            chunk = crops[start : start + self.cfg.batch_size]
            x = split_patches(chunk, g, self.cfg.patch_size).to(self.device)
            out.append(self.net(x).float().cpu().view(chunk.shape[0], g * g, -1))
        return torch.cat(out)


def build_region_cnn(cfg: RegionCNNConfig, clip_encoder: object | None = None, device: str = "cpu") -> RegionCNN:
    """The configured CNN; ``clip_tower`` needs the loaded :class:`memeops.models.clip.ClipEncoder`."""
    if cfg.kind == "vgg16":
        identity = {"weights_sha256": _file_sha256(cfg.weights) if cfg.weights else "random"}
        return RegionCNN(VGG16Trunk(cfg.weights), cfg, identity, device)
    if clip_encoder is None:
        raise ValueError("region_cnn.kind=clip_tower needs the pipeline's CLIP encoder")
    model = clip_encoder.model  # type: ignore[attr-defined]
    pp = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    tower = ClipTower(model.visual, clip_encoder.config.image_size,  # type: ignore[attr-defined]
                      tuple(pp.get("mean") or _OPENAI_MEAN), tuple(pp.get("std") or _OPENAI_STD))  # fmt: skip
    return RegionCNN(tower, cfg, {"clip": clip_encoder.spec_key}, device)  # type: ignore[attr-defined]


def _file_sha256(path: str | Path) -> str:
    from memeops.models.clip import file_sha256

    return file_sha256(path)
