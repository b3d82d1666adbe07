"""The real-checkpoint VLM path (memeops.vlm.hf) on a TINY LLaVA built offline.

The checkpoint is a random-init ``LlavaForConditionalGeneration`` (tiny CLIP vision tower + tiny Llama)
with a ``LlavaProcessor`` made of a byte-level BPE tokenizer trained here with ``tokenizers`` (special
tokens incl. ``<image>``, a chat template) and a ``CLIPImageProcessor`` (16x16 images, 8-px patches:
4 patches + CLS, CLS dropped -> 4 image tokens). Both are saved to a temp folder and loaded back through
``load_hf_vlm`` (AutoModelForImageTextToText + AutoProcessor, local files only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from memeops.vlm import hf

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ':\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
)
PROMPT = "Is this meme hateful? Answer with a label and an explanation."
TARGET_YES = "Label: yes\nExplanation: the caption mocks a group."
TARGET_NO = "Label: no\nExplanation: a harmless joke about cats."
CORPUS = [
    "user:\n" + PROMPT + "\nassistant:\n",
    TARGET_YES,
    TARGET_NO,
    "Label: yes\nLabel: no\nExplanation: the meme text is about people and cats.",
] * 3


def _tiny_llava(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_llava")
    _tiny_llava(folder)
    return folder


def _cfg(path: Path, **kw) -> hf.HFVlmConfig:
    lora = hf.LoraSettings(rank=4, alpha=8, dropout=0.0)
    return hf.HFVlmConfig(path=path, device="cpu", dtype="auto", lora=lora, **kw)


def _image(color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (20, 16), color)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_config_defaults_and_validation(tmp_path):
    lora = hf.LoraSettings()
    assert (lora.rank, lora.alpha, lora.dropout) == (16, 32, 0.05)
    assert lora.target_modules == "all-linear" and lora.enabled
    cfg = hf.HFVlmConfig(path=tmp_path)
    assert cfg.trust_remote_code is False and cfg.gradient_checkpointing is None
    assert hf.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ValidationError):
        hf.LoraSettings(rnak=4)
    with pytest.raises(ValidationError):
        hf.HFVlmConfig(path=tmp_path, dtype="fp16")
    with pytest.raises(FileNotFoundError, match="not found"):
        hf.load_hf_vlm(hf.HFVlmConfig(path=tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_hf_vlm(hf.HFVlmConfig(path=tmp_path))


def test_load_lora_targets_and_label_mask(ckpt):
    from peft import PeftModel

    model, processor = hf.load_hf_vlm(_cfg(ckpt))
    assert isinstance(model, PeftModel)
    assert type(processor).__name__ == "LlavaProcessor"
    targets = hf.resolve_lora_targets(model.get_base_model())
    # "all-linear" here = the 7 projections of each Llama layer; no vision tower, projector or lm_head.
    assert len(targets) == 2 * 7
    assert all(".language_model.layers." in t for t in targets)
    assert sorted(model.peft_config["default"].target_modules) == targets
    # peft's own "all-linear" would also adapt the vision tower and the projector (not lm_head)
    from transformers import AutoModelForImageTextToText

    fresh = AutoModelForImageTextToText.from_pretrained(ckpt, local_files_only=True)
    assert hf.resolve_lora_targets(fresh) == targets
    peft_all = [n for n, m in fresh.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert any("vision_tower" in n for n in peft_all) and any("multi_modal_projector" in n for n in peft_all)
    trainable = hf.trainable_parameters(model)
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(k in n for n in trainable for k in ("vision_tower", "multi_modal_projector", "lm_head"))

    tok = processor.tokenizer
    batch = hf.build_inputs(
        processor, [_image(), _image((0, 90, 200))], [PROMPT, "Short?"], [TARGET_YES, "Label: no"]
    )
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values", "labels"}
    for row, target in enumerate([TARGET_YES, "Label: no"]):
        answer = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        labels = batch["labels"][row]
        kept = labels[labels != hf.IGNORE_INDEX]
        assert kept.tolist() == answer  # only the answer (+ EOS) counts
        n_real = int(batch["attention_mask"][row].sum())
        assert (
            batch["input_ids"][row, n_real - len(answer) : n_real].tolist() == answer
        )  # answer ends the row
        assert (labels[n_real:] == hf.IGNORE_INDEX).all()  # padding ignored
    # the prompt carries the image placeholder, expanded to 4 image tokens per example
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ((batch["input_ids"] == image_id).sum(dim=1) == 4).all()


def test_train_save_reload_score(ckpt, tmp_path):
    cfg = _cfg(ckpt, gradient_checkpointing=True)  # exercises the checkpointing + input-grads path on CPU
    model, processor = hf.load_hf_vlm(cfg)
    base = model.get_base_model()
    flag = getattr(base, "is_activation_checkpointing", None)
    assert flag if flag is not None else base.is_gradient_checkpointing
    before = _lora_state(model)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    batch = hf.build_inputs(
        processor, [_image(), _image((0, 90, 200))], [PROMPT, PROMPT], [TARGET_YES, TARGET_NO]
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = [hf.train_step(model, batch, opt) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = _lora_state(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    frozen_after = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(frozen_before[n], frozen_after[n]) for n in frozen_before)  # base untouched

    folder = hf.save_adapter(model, tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file()
    reloaded, _ = hf.load_adapter(_cfg(ckpt), folder)
    model.eval()
    reloaded.eval()
    eval_batch = hf.to_device(hf.build_inputs(processor, [_image()], [PROMPT], [TARGET_YES]), model)
    with torch.no_grad():
        a = model(**eval_batch).logits
        b = reloaded(**eval_batch).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    sums, counts = hf.score_candidates(reloaded, processor, _image(), PROMPT, ["yes", "no"])
    assert sums.shape == (2,) and counts.shape == (2,)
    assert torch.isfinite(sums).all() and (sums < 0).all() and (counts > 0).all()
    tok = processor.tokenizer
    assert counts.tolist() == [
        len(tok(f"Label: {c}", add_special_tokens=False)["input_ids"]) for c in ("yes", "no")
    ]


def _parse(text: str):
    try:
        from memeops.vlm.instructions import parse_answer
    except ImportError:  # pragma: no cover - the instructions module is written separately
        return None
    return parse_answer(text, ["no", "yes"])


def test_overfit_generate_and_parse(ckpt):
    """Overfit one example (~20 steps) so greedy generation reproduces ``Label: yes\nExplanation: ...``
    and the strict parser reads the label; the trained model also ranks "yes" above "no"."""
    torch.manual_seed(0)
    model, processor = hf.load_hf_vlm(_cfg(ckpt))
    image = _image()
    batch = hf.build_inputs(processor, [image], [PROMPT], [TARGET_YES])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    first = hf.train_step(model, batch, opt)
    answer, loss = "", first
    for step in range(2, 61):
        loss = hf.train_step(model, batch, opt)
        if step >= 10 and step % 5 == 0:
            answer = hf.generate_answer(model, processor, image, PROMPT, max_new_tokens=40)
            if answer == TARGET_YES:
                break
    assert loss < 0.5 * first
    assert answer == TARGET_YES, (answer, loss)
    parsed = _parse(answer)
    if parsed is not None:
        assert parsed.valid and parsed.label == "yes", parsed
        assert parsed.explanation == "the caption mocks a group."
    else:  # minimal strict fallback
        assert answer.splitlines()[0].strip() == "Label: yes"
    sums, counts = hf.score_candidates(model, processor, image, PROMPT, ["yes", "no"])
    assert (sums / counts)[0] > (sums / counts)[1]


QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _tiny_qwen2_vl(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=QWEN_SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    pixels = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 4}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def test_qwen2_vl_smoke(tmp_path):
    """The same path on a tiny Qwen2-VL (the MemeLens family): grid-based image tokens, mm_token_type_ids."""
    _tiny_qwen2_vl(tmp_path / "qwen")
    cfg = _cfg(tmp_path / "qwen", gradient_checkpointing=True)
    model, processor = hf.load_hf_vlm(cfg)
    assert type(model.get_base_model()).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert all("lora_" in n and ".visual." not in n for n in hf.trainable_parameters(model))
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    batch = hf.build_inputs(processor, [image, image], [PROMPT, "Short?"], [TARGET_YES, "Label: no"])
    assert "image_grid_thw" in batch
    tok = processor.tokenizer
    for row, target in enumerate([TARGET_YES, "Label: no"]):
        n_answer = len(tok(target, add_special_tokens=False)["input_ids"]) + 1
        assert int((batch["labels"][row] != hf.IGNORE_INDEX).sum()) == n_answer
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = [hf.train_step(model, batch, opt) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    sums, counts = hf.score_candidates(model, processor, image, PROMPT, ["yes", "no"])
    assert torch.isfinite(sums).all() and (counts > 0).all()
    assert isinstance(hf.generate_answer(model, processor, image, PROMPT, max_new_tokens=4), str)
