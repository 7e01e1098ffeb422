"""Convert a checkpoint in the original deepseek-ai/Janus layout into the transformers Janus layout.

deepseek-ai/Janus (and Janus-Pro) checkpoints load with the `janus` package's MultiModalityCausalLM:
config.json holds language_config / vision_config / aligner_config / gen_*_config, and weights
are named language_model.model.*, vision_model.vision_tower.* (a timm ViT with fused qkv),
gen_vision_model.* (LlamaGen's VQ), aligner.layers.*, gen_aligner.layers.*, gen_head.*,
gen_embed.*. transformers ships convert_janus_weights_to_hf.py for this, but not in the wheel
(it lives in the source tree and downloads from the hub), so the renames are written here from
the same module correspondence; tests/model/test_assemble.py checks them by converting a
checkpoint made by inverting a transformers Janus and comparing logits.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from model.assemble import AssembleError, fill_model, llamagen_to_janus_vq, read_state_dict, vq_config_from_llamagen

log = logging.getLogger("janus_forge.deepseek_janus")

# The timm SigLIP towers Janus builds by name; their widths are in the weights, heads are not.
KNOWN_VISION_HEADS = {"siglip_large_patch16_384": 16, "siglip_so400m_patch14_384": 16, "siglip_so400m_patch14_224": 16}
TOWER = "vision_model.vision_tower."

_TOWER_RENAMES = [  # timm VisionTransformer name -> JanusVisionModel name (fused qkv handled apart)
    (r"^pos_embed$", "embeddings.position_embedding.weight"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm\.", "post_layernorm."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection_layer."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
]


def _aligner_key(rest: str, target: str) -> str:
    """Janus's MlpProjector is Sequential(Linear, GELU, Linear, ...): Linear i sits at index 2i."""
    m = re.match(r"^layers\.(\d+)\.(weight|bias)$", rest)
    if not m or int(m.group(1)) % 2:
        raise AssembleError(f"unexpected aligner tensor {rest!r} (expected layers.<even index>.weight/bias)")
    index = int(m.group(1)) // 2
    return f"{target}.fc1.{m.group(2)}" if index == 0 else f"{target}.hidden_layers.{index - 1}.{m.group(2)}"


def deepseek_to_janus_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split fused qkv of) a deepseek-ai/Janus state dict into JanusForConditionalGeneration's."""
    out: dict[str, torch.Tensor] = {}
    vq: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("language_model.model."):
            out["model.language_model." + key[len("language_model.model."):]] = value
        elif key == "language_model.lm_head.weight":
            out["lm_head.weight"] = value
        elif key.startswith(TOWER):
            rest = key[len(TOWER):]
            if rest.startswith("attn_pool."):
                continue  # SigLIP's pooling head: Janus reads patch features and never uses it
            qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", rest)
            if qkv:
                layer, kind = qkv.groups()
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"model.vision_model.encoder.layers.{layer}.self_attn.{name}.{kind}"] = part.contiguous()
                continue
            for pattern, repl in _TOWER_RENAMES:
                if re.match(pattern, rest):
                    new = re.sub(pattern, repl, rest)
                    out["model.vision_model." + new] = value.squeeze(0) if rest == "pos_embed" else value
                    break
            else:
                unknown.append(key)
        elif key.startswith("gen_vision_model."):
            vq[key[len("gen_vision_model."):]] = value
        elif key.startswith("gen_aligner."):
            out[_aligner_key(key[len("gen_aligner."):], "model.generation_aligner")] = value
        elif key.startswith("aligner."):
            out[_aligner_key(key[len("aligner."):], "model.aligner")] = value
        elif key.startswith("gen_head.output_mlp_projector."):
            out["model.generation_head.proj_out." + key[len("gen_head.output_mlp_projector."):]] = value
        elif key.startswith("gen_head.vision_head."):
            out["model.generation_head.vision_head." + key[len("gen_head.vision_head."):]] = value
        elif key.startswith("gen_embed."):
            out["model.generation_embeddings." + key[len("gen_embed."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise AssembleError(f"tensors the deepseek-ai/Janus layout does not have: {unknown[:5]} "
                            f"({len(unknown)} in all); is this a Janus / Janus-Pro checkpoint?")
    out.update({"model.vqmodel." + k: v for k, v in llamagen_to_janus_vq(vq).items()})
    return out


def janus_config_from_deepseek(config: dict, state: dict[str, torch.Tensor], tokenizer):
    """A JanusConfig from a deepseek-ai/Janus config.json; dims the file leaves out are read off the weights."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    def params(name: str) -> dict:
        section = config.get(name)
        if not isinstance(section, dict):
            raise AssembleError(f"config.json has no {name!r}: not the deepseek-ai/Janus layout")
        return section.get("params", {})

    language = {k: v for k, v in (config.get("language_config") or {}).items() if k not in ("model_type", "torch_dtype", "_name_or_path")}
    if not language:
        raise AssembleError("config.json has no 'language_config': not the deepseek-ai/Janus layout")
    vocab = state["language_model.model.embed_tokens.weight"].shape[0]
    text = LlamaConfig(**{**language, "vocab_size": vocab, "tie_word_embeddings": False,
                          "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                          "eos_token_id": tokenizer.eos_token_id})
    vision_params, aligner = params("vision_config"), params("aligner_config")
    patch = state[TOWER + "patch_embed.proj.weight"]
    hidden, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    layers = len({m.group(1) for k in state if (m := re.match(re.escape(TOWER) + r"blocks\.(\d+)\.", k))})
    inter = state[TOWER + "blocks.0.mlp.fc1.weight"].shape[0]
    model_name = vision_params.get("model_name", "")
    heads = vision_params.get("num_heads", KNOWN_VISION_HEADS.get(model_name))
    if heads is None:
        raise AssembleError(f"vision_config.params.model_name={model_name!r} is not a known SigLIP tower "
                            f"({sorted(KNOWN_VISION_HEADS)}); add its head count as vision_config.params.num_heads")
    image_size = vision_params.get("image_size", 384)
    vision = JanusVisionConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_channels=channels,
        image_size=image_size, patch_size=patch_size,
        mlp_ratio=(inter + 0.5) / hidden,  # int(hidden * ratio) must give back fc1's width exactly
        projection_dim=aligner.get("n_embed", text.hidden_size), depth=aligner.get("depth", 2),
        num_image_tokens=(image_size // patch_size) ** 2,
    )
    vq_state = {k[len("gen_vision_model."):]: v for k, v in state.items() if k.startswith("gen_vision_model.")}
    gen_aligner, gen_head = params("gen_aligner_config"), params("gen_head_config")
    vq = JanusVQVAEConfig(**vq_config_from_llamagen(vq_state), projection_dim=gen_aligner.get("n_embed", text.hidden_size),
                          depth=gen_aligner.get("depth", 2),
                          image_token_embed_dim=gen_head.get("image_token_embed", text.hidden_size))
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token), tie_word_embeddings=False)


def _processor(src: Path, num_image_tokens: int, image_size: int):
    from transformers import AutoTokenizer, JanusImageProcessor, JanusProcessor

    from model.tokenizer import CHAT_TEMPLATE, IMAGE_TOKENS, PAD

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer peeks at config.json and warns that model_type "multi_modality" is unknown
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, extra_special_tokens=IMAGE_TOKENS,
                                                  padding_side="left")
    except (OSError, ValueError) as err:
        raise AssembleError(f"{src} has no usable tokenizer ({err})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [t for t in IMAGE_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        raise AssembleError(f"the tokenizer in {src} lacks Janus's tokens {missing}: not a Janus checkpoint's tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    kwargs = {"size": {"height": image_size, "width": image_size}}
    pre = src / "preprocessor_config.json"
    if pre.is_file():
        pre_cfg = json.loads(pre.read_text())
        kwargs.update({k: pre_cfg[k] for k in ("image_mean", "image_std", "min_size", "rescale_factor", "do_normalize")
                       if k in pre_cfg})
    return JanusProcessor(image_processor=JanusImageProcessor(**kwargs), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                          use_default_system_prompt=True, num_image_tokens=num_image_tokens)


def convert_deepseek(src: str | Path, out: str | Path, dtype: str | None = None) -> dict:
    """Convert `src` (deepseek-ai/Janus layout) to `out` (transformers Janus layout); returns a summary.

    The VQ codebook is stored L2-normalised, as `janus-forge assemble` does (see model.assemble.load_vq):
    Janus's VQ normalises codes inside its quantiser, transformers' encode does not.
    """
    from model.assemble import DTYPES
    from model.tiny import set_generation_defaults

    src, out = Path(src), Path(out)
    config_file = src / "config.json"
    if not config_file.is_file():
        raise AssembleError(f"{src} has no config.json" if src.is_dir() else f"{src} does not exist")
    config = json.loads(config_file.read_text())
    if config.get("model_type") == "janus":
        raise AssembleError(f"{src} is already in the transformers Janus layout (model_type='janus'); load it directly")
    state = read_state_dict(src, "Janus checkpoint")
    if dtype is not None and dtype not in DTYPES:
        raise AssembleError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    target_dtype = DTYPES[dtype] if dtype else state["language_model.model.embed_tokens.weight"].dtype
    vision_params = (config.get("vision_config") or {}).get("params", {})
    patch = state[TOWER + "patch_embed.proj.weight"].shape[-1] if TOWER + "patch_embed.proj.weight" in state else None
    if patch is None:
        raise AssembleError(f"{src} has no {TOWER}patch_embed.proj.weight: not the deepseek-ai/Janus layout")
    image_size = vision_params.get("image_size", 384)
    processor = _processor(src, (image_size // patch) ** 2, image_size)
    janus_config = janus_config_from_deepseek(config, state, processor.tokenizer)
    converted = deepseek_to_janus_state(state)
    codebook = "model.vqmodel.quantize.embedding.weight"
    converted[codebook] = torch.nn.functional.normalize(converted[codebook].float(), dim=-1).to(converted[codebook].dtype)
    model, _ = fill_model(janus_config, converted, seed=0, dtype=target_dtype, fresh_prefixes=())
    set_generation_defaults(model, processor.tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    summary = {"source": str(src), "dtype": str(target_dtype).removeprefix("torch."), "tensors": len(converted),
               "parameters": sum(p.numel() for p in model.parameters()), "codebook_l2_normalised": True}
    log.info("converted %s -> %s (%d parameters)", src, out, summary["parameters"])
    return summary
