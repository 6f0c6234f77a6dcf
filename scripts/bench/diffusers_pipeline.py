#!/usr/bin/env python3
"""Whole diffusers 0.42.1 Qwen-Image pipelines on a CUDA GPU with full-size random bf16
weights: the diffusers side of docs/speed.md's whole-image rows.

Components are made directly on the GPU in bf16 with PyTorch's default init: the DiT
(QwenImageTransformer2DModel defaults = Qwen-Image), the VAE (AutoencoderKLQwenImage
defaults), and Qwen2.5-VL-7B's text model and vision tower from their published sizes; the
tokenizer and scheduler config are the tiny fixture's (the tokenizer only turns the prompt
into ids; the scheduler config is Qwen-Image's). Timed, each after one untimed warm-up call
(and, compiled, after compile_repeated_blocks' first call), with a device synchronise:

  lightning  QwenImagePipeline, 1024², 8 steps, CFG off, the Lightning scheduler recipe
             (configs/qwen-image-lightning-scheduler.json), eager and compiled;
  img2img    QwenImageImg2ImgPipeline, 1024², strength 0.6, 20 steps, true CFG (negative " "),
             eager; plus the VAE encode of a 1024² image alone;
  edit       (--edit) QwenImageEditPipeline, one random 1024² picture → 1024², 40 true-CFG
             steps (negative " "), eager and compiled, one timed call each after a warm-up;
             plus the vision tower alone on the processor's 1036² patches. The processor is
             Qwen2VLProcessor over the fixture tokenizer (the text encoder's image/vision token
             ids set to the tokenizer's) and Qwen-Image-Edit's image processor settings
             (3136 to 12845056 pixels); `mm_token_type_ids` forwarded as diffusers PR #14189
             does (3-D positions, as ours).

Usage (GPU machine, repository root, the diffusers wheels on PYTHONPATH):
    python3 scripts/bench/diffusers_pipeline.py --json $OUT/diffusers_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

GIB = float(1 << 30)


def sync() -> None:
    torch.cuda.synchronize()


def on_gpu_bf16(make):
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            m = make()
    finally:
        torch.set_default_dtype(prev)
    return m.eval().requires_grad_(False)


def text_encoder(token_ids: dict | None = None):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=128000,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        vocab_size=152064,
        **(token_ids or {}),
    )
    return on_gpu_bf16(lambda: Qwen2_5_VLForConditionalGeneration(cfg))


def timed(f, n: int = 2) -> list[float]:
    out = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        f()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", default="fixtures/data/pipeline/tiny")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--lightning-only", action="store_true", help="stop after the Lightning rows")
    ap.add_argument("--edit", action="store_true", help="only the edit rows")
    a = ap.parse_args()
    if a.edit:
        edit(a)
        return

    import diffusers
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageImg2ImgPipeline,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from PIL import Image
    from transformers import Qwen2Tokenizer

    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    t0 = time.perf_counter()
    transformer = on_gpu_bf16(QwenImageTransformer2DModel)
    vae = on_gpu_bf16(AutoencoderKLQwenImage)
    te = text_encoder()
    tok = Qwen2Tokenizer.from_pretrained(f"{a.fixture}/tokenizer")
    sched_cfg = json.load(open(f"{a.fixture}/scheduler/scheduler_config.json"))
    print(f"random components built in {time.perf_counter() - t0:.1f} s; allocated "
          f"{torch.cuda.memory_allocated() / GIB:.2f} GiB")
    rows: dict[str, object] = {}

    # Lightning: 8 steps, CFG off, the recipe's scheduler.
    lightning = json.load(open("configs/qwen-image-lightning-scheduler.json"))
    sched = FlowMatchEulerDiscreteScheduler.from_config({**sched_cfg, **lightning})
    pipe = QwenImagePipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    prompt = "A red fox sitting in fresh snow at dawn, soft watercolor, pastel colors"

    def light():
        pipe(prompt, width=1024, height=1024, num_inference_steps=8, true_cfg_scale=1.0,
             generator=torch.Generator("cuda").manual_seed(0), output_type="pil")

    light()  # warm-up
    torch.cuda.reset_peak_memory_stats()
    t = timed(light)
    rows["lightning_eager_ms"] = t
    print(f"lightning 1024² 8 steps, eager: {t} ms, peak {torch.cuda.max_memory_allocated() / GIB:.2f} GiB")

    if not a.skip_compile:
        t0 = time.perf_counter()
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
        light()
        print(f"compile + first lightning image: {time.perf_counter() - t0:.1f} s")
        t = timed(light)
        rows["lightning_compiled_ms"] = t
        print(f"lightning 1024² 8 steps, compiled: {t} ms")

    if a.lightning_only:
        if a.json:
            json.dump(rows, open(a.json, "w"), indent=1)
        return

    # img2img, 20 true-CFG steps at strength 0.6 (eager: a compiled transformer would carry
    # over from above; time it only if it is there).
    i2i = QwenImageImg2ImgPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(sched_cfg),
                                   vae=vae, text_encoder=te, tokenizer=tok, transformer=transformer)
    i2i.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    img = Image.fromarray((torch.rand(1024, 1024, 3, generator=g) * 255).to(torch.uint8).numpy())

    def img2img():
        i2i(prompt, image=img, negative_prompt=" ", true_cfg_scale=4.0, strength=0.6,
            num_inference_steps=20, width=1024, height=1024,
            generator=torch.Generator("cuda").manual_seed(0), output_type="pil")

    img2img()
    t = timed(img2img)
    rows["img2img_ms"] = t
    rows["img2img_transformer"] = "compiled" if not a.skip_compile else "eager"
    print(f"img2img 1024² strength 0.6, 20 true-CFG steps ({rows['img2img_transformer']} DiT): {t} ms")

    x = torch.randn(1, 3, 1, 1024, 1024, device="cuda", dtype=torch.bfloat16)

    def encode():
        vae.encode(x).latent_dist.sample()

    encode()
    t = timed(encode, 5)
    rows["vae_encode_1024_ms"] = t
    print(f"VAE encode 1024²: {t} ms")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


def edit(a) -> None:
    import diffusers
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,
                           QwenImageEditPipeline, QwenImageTransformer2DModel)
    from PIL import Image
    import transformers
    from transformers import Qwen2Tokenizer, Qwen2VLProcessor, processing_utils
    try:  # transformers 5.x: the PIL backend by name
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as ImageProcessor)
    except ImportError:  # 4.x: the slow processor is the PIL one
        from transformers import Qwen2VLImageProcessor as ImageProcessor

    # Qwen2VLProcessor type-checks its (absent) video processor: skip that for None only.
    check = getattr(processing_utils.ProcessorMixin, "check_argument_for_proper_class", None)
    if check is not None:
        processing_utils.ProcessorMixin.check_argument_for_proper_class = (
            lambda self, name, arg: None if arg is None else check(self, name, arg))
    print(f"transformers {transformers.__version__}")
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    tok = Qwen2Tokenizer.from_pretrained(f"{a.fixture}/tokenizer")
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    t0 = time.perf_counter()
    transformer = on_gpu_bf16(QwenImageTransformer2DModel)
    vae = on_gpu_bf16(AutoencoderKLQwenImage)
    te = text_encoder(ids)
    forward = te.forward

    def forward_with_types(*args, **kwargs):
        if kwargs.get("mm_token_type_ids") is None and kwargs.get("input_ids") is not None:
            kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == ids["image_token_id"]).to(torch.int32)
        return forward(*args, **kwargs)

    te.forward = forward_with_types
    image_processor = ImageProcessor(min_pixels=3136, max_pixels=12845056)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok)
    sched_cfg = json.load(open(f"{a.fixture}/scheduler/scheduler_config.json"))
    pipe = QwenImageEditPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(sched_cfg), vae=vae,
                                 text_encoder=te, tokenizer=tok, processor=processor, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    print(f"random components built in {time.perf_counter() - t0:.1f} s; allocated "
          f"{torch.cuda.memory_allocated() / GIB:.2f} GiB", flush=True)
    g = torch.Generator().manual_seed(1)
    img = Image.fromarray((torch.rand(1024, 1024, 3, generator=g) * 255).to(torch.uint8).numpy())
    prompt = "A red fox sitting in fresh snow at dawn, soft watercolor, pastel colors"
    rows: dict[str, object] = {}

    batch = image_processor(images=[img], return_tensors="pt")
    pv = batch["pixel_values"].to("cuda", torch.bfloat16)
    grid = batch["image_grid_thw"].to("cuda")
    with torch.inference_mode():
        te.model.visual(pv, grid_thw=grid)
        t = timed(lambda: te.model.visual(pv, grid_thw=grid), 5)
    rows["vision_tower_ms"] = t
    rows["vision_grid"] = grid.tolist()
    print(f"vision tower, grid {grid.tolist()}: {t} ms", flush=True)

    def run():
        pipe(image=img, prompt=prompt, negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=40,
             generator=torch.Generator("cuda").manual_seed(0), output_type="pil")

    run()
    torch.cuda.reset_peak_memory_stats()
    t = timed(run, 1)
    rows["edit_eager_ms"] = t
    print(f"edit 1024² + 1024² picture, 40 true-CFG steps, eager: {t} ms, "
          f"peak {torch.cuda.max_memory_allocated() / GIB:.2f} GiB", flush=True)
    if not a.skip_compile:
        t0 = time.perf_counter()
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
        run()
        print(f"compile + first edit: {time.perf_counter() - t0:.1f} s", flush=True)
        t = timed(run, 1)
        rows["edit_compiled_ms"] = t
        print(f"edit 1024² + 1024² picture, 40 true-CFG steps, compiled: {t} ms", flush=True)
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
