"""Build the paper's stage-I starting point: a pre-trained LLM + SigLIP + LlamaGen VQ, fresh adaptors and heads.

Janus-Pro's stage I (paper §2.2, Table 2) starts from DeepSeek-LLM, the SigLIP-L encoder and
LlamaGen's VQ-16 tokenizer; the understanding aligner, the generation aligner, the image-id
embeddings and the image head are new. `assemble` reads the three parts from local dirs, derives
a JanusConfig from them, copies their weights into a transformers JanusForConditionalGeneration,
initialises the new parts from a seed, adds Janus's special tokens to the LLM's tokenizer and
saves model + JanusProcessor in the transformers Janus layout (what `model.tiny.load_janus` reads).

The model is built on the meta device and every tensor is then written exactly once (copied or
freshly initialised), so a 7B base costs its own size in memory and no time in a throwaway init.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("janus_forge.assemble")

# The new parts of a stage-I base (parameter names under JanusForConditionalGeneration).
FRESH_PREFIXES = ("model.aligner.", "model.generation_aligner.", "model.generation_embeddings.", "model.generation_head.")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class AssembleError(ValueError):
    """An input dir is missing, of the wrong architecture, or its dimensions do not fit the others."""


# ---------------------------------------------------------------- reading state dicts


def read_state_dict(path: Path, what: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file or of a dir's (possibly sharded) safetensors / pytorch_model files."""
    from safetensors.torch import load_file

    if path.is_dir():
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = path / index_name
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                out: dict[str, torch.Tensor] = {}
                for shard in shards:
                    out.update(read_state_dict(path / shard, what, allow_pickle))
                return out
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_state_dict(path / name, what, allow_pickle)
        found = sorted(p.name for p in path.iterdir())[:10]
        raise AssembleError(f"{what} dir {path} has no model.safetensors or pytorch_model.bin (found {found})")
    if not path.is_file():
        raise AssembleError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # pickle.UnpicklingError and friends: a training checkpoint with Python objects
        raise AssembleError(f"{what} {path} could not be read as plain tensors ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]}); if you trust the file, pass --allow-pickle") from err
    return _unwrap_state_dict(obj, path, what)


def _unwrap_state_dict(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    """LlamaGen saves {"model": state_dict, ...} and loads "model" itself (sample_c2i.py); plain state dicts pass through."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "ema"):
            if isinstance(obj.get(key), dict):
                return {k: v for k, v in obj[key].items() if isinstance(v, torch.Tensor)}
    raise AssembleError(f"{what} {path} holds no state dict (expected tensors, or a dict with 'model'/'ema'/'state_dict')")


def _read_config(path: Path, what: str, model_types: tuple[str, ...]) -> dict:
    config_file = path / "config.json"
    if not path.is_dir():
        raise AssembleError(f"{what} dir {path} does not exist")
    if not config_file.is_file():
        raise AssembleError(f"{what} dir {path} has no config.json")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type not in model_types:
        raise AssembleError(f"{what} dir {path} holds model_type={model_type!r}; expected one of {list(model_types)}")
    return config


# ---------------------------------------------------------------- the LLM


def load_llm(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(LlamaConfig dict, state dict renamed into JanusForConditionalGeneration) of a LlamaForCausalLM dir."""
    from transformers import LlamaConfig

    config = _read_config(path, "LLM", ("llama",))
    archs = config.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in archs:
        raise AssembleError(f"LLM dir {path} is a {archs}; expected LlamaForCausalLM (DeepSeek-LLM is one)")
    weights = {}
    for key, value in read_state_dict(path, "LLM").items():
        if key.startswith("model."):
            weights["model.language_model." + key[len("model."):]] = value
        elif key == "lm_head.weight":
            weights[key] = value
        else:
            raise AssembleError(f"LLM dir {path} has an unexpected tensor {key!r} (not a LlamaForCausalLM)")
    config = LlamaConfig.from_pretrained(path, local_files_only=True).to_dict()  # defaults filled in
    if "lm_head.weight" not in weights:  # a tied checkpoint stores only the embeddings
        weights["lm_head.weight"] = weights["model.language_model.embed_tokens.weight"]
    return config, weights


# ---------------------------------------------------------------- SigLIP


def load_siglip(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(SigLIP vision config dict, state dict renamed into the Janus vision tower) of a SiglipVisionModel dir.

    A full SiglipModel dir (text + vision) works too: only the vision tower is read. The pooling
    head is dropped, as Janus drops SigLIP's attention pool.
    """
    from transformers import SiglipVisionConfig

    config = _read_config(path, "SigLIP", ("siglip_vision_model", "siglip"))
    vision = config.get("vision_config") or {} if config["model_type"] == "siglip" else config
    vision = SiglipVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"}).to_dict()  # defaults filled in
    state = read_state_dict(path, "SigLIP")
    # Full SiglipModel checkpoints (the published ones) prefix the tower with vision_model.; a
    # SiglipVisionModel saved by transformers 5 does not.
    if any(k.startswith("vision_model.") for k in state):
        state = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    weights = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue  # the attention-pool head: Janus reads patch features, not a pooled vector
        if not key.startswith(("embeddings.", "encoder.", "post_layernorm.")):
            raise AssembleError(f"SigLIP dir {path} has an unexpected tensor {key!r} (not a SiglipVisionModel)")
        weights["model.vision_model." + re.sub(r"\.self_attn\.out_proj\.", ".self_attn.projection_layer.", key)] = value
    if not weights:
        raise AssembleError(f"SigLIP dir {path} has no vision tower tensors (not a SiglipVisionModel)")
    return vision, weights


# ---------------------------------------------------------------- LlamaGen VQ

_VQ_RENAMES = [  # LlamaGen VQModel name -> transformers JanusVQVAE name (same modules, new names)
    (r"^(encoder)\.conv_blocks\.(\d+)\.res\.", r"\1.down.\2.block."),
    (r"^(encoder)\.conv_blocks\.(\d+)\.", r"\1.down.\2."),
    (r"^(decoder)\.conv_blocks\.(\d+)\.res\.", r"\1.up.\2.block."),
    (r"^(decoder)\.conv_blocks\.(\d+)\.", r"\1.up.\2."),
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
]


def llamagen_to_janus_vq(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a LlamaGen VQ state dict into JanusVQVAE's (no `model.vqmodel.` prefix); drops usage counters."""
    out = {}
    for key, value in state.items():
        if key.endswith("codebook_used") or key.startswith(("discriminator.", "loss.")):
            continue  # LlamaGen's training-time statistics / GAN parts, not part of the tokenizer
        for pattern, repl in _VQ_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def vq_config_from_llamagen(state: dict[str, torch.Tensor]) -> dict:
    """JanusVQVAEConfig fields read off a LlamaGen VQ state dict's shapes (LlamaGen ships no config)."""
    need = ("encoder.conv_in.weight", "encoder.conv_out.weight", "quantize.embedding.weight", "decoder.conv_out.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise AssembleError(f"VQ state dict lacks {missing}: not LlamaGen's VQ layout (keys like encoder.conv_blocks.0.res.0.conv1.weight)")
    base = state["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))})
    if not levels:
        raise AssembleError("VQ state dict has no encoder.conv_blocks.*: not LlamaGen's VQ layout")
    mult = [state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // base for i in levels]
    res_blocks = len({int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))})
    num_embeddings, embed_dim = state["quantize.embedding.weight"].shape
    return dict(
        embed_dim=int(embed_dim),
        num_embeddings=int(num_embeddings),
        base_channels=int(base),
        channel_multiplier=mult,
        num_res_blocks=res_blocks,
        latent_channels=int(state["encoder.conv_out.weight"].shape[0]),
        in_channels=int(state["encoder.conv_in.weight"].shape[1]),
        out_channels=int(state["decoder.conv_out.weight"].shape[0]),
    )


def load_vq(path: Path, allow_pickle: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JanusVQVAEConfig fields, state dict under `model.vqmodel.`) of a LlamaGen VQ file/dir or a JanusVQVAE dir.

    The codebook is stored L2-normalised. LlamaGen (codebook_l2_norm=True) normalises codes and
    latents inside its quantiser but saves the raw codebook; transformers' JanusVQVAE normalises
    only in `decode`, while its `encode` picks the nearest *stored* code. With unit-norm stored
    codes the nearest code is the one of largest cosine, which is LlamaGen's choice, and decode is
    unchanged (normalising twice is normalising once): encode and decode both match LlamaGen.
    """
    if path.is_dir() and (path / "config.json").is_file():
        config = _read_config(path, "VQ", ("janus_vqgan",))
        fields = ("embed_dim", "num_embeddings", "base_channels", "channel_multiplier", "num_res_blocks",
                  "latent_channels", "in_channels", "out_channels", "double_latent")
        vq_fields = {k: config[k] for k in fields if k in config}
        state = read_state_dict(path, "VQ", allow_pickle)
    else:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors"))
            if len(files) != 1:
                raise AssembleError(f"VQ dir {path} has no config.json and {len(files)} checkpoint files "
                                    f"({[f.name for f in files]}); pass the LlamaGen .pt file itself")
            path = files[0]
        raw = read_state_dict(path, "VQ", allow_pickle)
        vq_fields = vq_config_from_llamagen(raw)
        state = llamagen_to_janus_vq(raw)
    state = {"model.vqmodel." + k: v for k, v in state.items()}
    codebook = "model.vqmodel.quantize.embedding.weight"
    if codebook not in state:
        raise AssembleError(f"VQ at {path} has no quantize.embedding.weight")
    state[codebook] = torch.nn.functional.normalize(state[codebook].float(), dim=-1).to(state[codebook].dtype)
    return vq_fields, state


# ---------------------------------------------------------------- tokenizer and processor


def build_processor(llm_dir: Path, siglip_dir: Path, image_size: int, num_image_tokens: int):
    """JanusProcessor: the LLM's tokenizer plus Janus's special tokens, SigLIP's image normalisation."""
    from transformers import AutoTokenizer, JanusImageProcessor, JanusProcessor

    from model.tokenizer import ASSISTANT, CHAT_TEMPLATE, IMAGE_TOKENS, PAD, USER

    try:
        # left padding: generate() left-pads prompts (as the tiny preset's tokenizer does)
        tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True, extra_special_tokens=IMAGE_TOKENS,
                                                  padding_side="left")
    except (OSError, ValueError) as err:
        raise AssembleError(f"LLM dir {llm_dir} has no usable tokenizer ({err})") from err
    # Janus registers the image tokens and the chat roles as special (never split); DeepSeek-LLM has
    # no pad token, Janus uses <｜▁pad▁｜>.
    wanted = [*IMAGE_TOKENS.values(), USER, ASSISTANT]
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in wanted if t not in tokenizer.get_vocab()]},
                                 replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    mean, std = [0.5] * 3, [0.5] * 3  # SigLIP's own normalisation, also what the VQ expects
    pre = siglip_dir / "preprocessor_config.json"
    if pre.is_file():
        pre_cfg = json.loads(pre.read_text())
        mean, std = pre_cfg.get("image_mean", mean), pre_cfg.get("image_std", std)
    image_processor = JanusImageProcessor(size={"height": image_size, "width": image_size},
                                          min_size=min(14, image_size), image_mean=mean, image_std=std)
    return JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                          use_default_system_prompt=True, num_image_tokens=num_image_tokens)


# ---------------------------------------------------------------- config


def janus_config_from_parts(llm: dict, vision: dict, vq: dict, tokenizer):
    """JanusConfig whose towers are the given parts; aligners and heads map into the LLM's width."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    text_fields = {k: v for k, v in llm.items() if k not in ("architectures", "model_type", "transformers_version",
                                                              "_name_or_path", "torch_dtype", "dtype", "auto_map")}
    text_fields.update(vocab_size=max(llm["vocab_size"], len(tokenizer)), tie_word_embeddings=False,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    text = LlamaConfig(**text_fields)
    hidden, inter = vision["hidden_size"], vision["intermediate_size"]
    image_size, patch = vision["image_size"], vision["patch_size"]
    if image_size % patch:
        raise AssembleError(f"SigLIP image_size={image_size} is not a multiple of its patch_size={patch}")
    levels = len(vq["channel_multiplier"]) - 1
    if 2**levels != patch:
        raise AssembleError(f"the VQ downsamples by {2**levels} (channel_multiplier {vq['channel_multiplier']}) but SigLIP's "
                            f"patch_size is {patch}: Janus needs both to see the same grid of {image_size // patch}^2 tokens")
    vision_config = JanusVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        num_channels=vision.get("num_channels", 3),
        image_size=image_size,
        patch_size=patch,
        # JanusVisionMLP sizes fc1 as int(hidden * mlp_ratio): half a unit up keeps the int exact
        # for widths like SigLIP-so400m's 4304 / 1152, where the plain ratio rounds down.
        mlp_ratio=(inter + 0.5) / hidden,
        hidden_act=vision.get("hidden_act", "gelu_pytorch_tanh"),  # the tower must compute what SigLIP computed
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        attention_bias=True,
        projection_dim=text.hidden_size,
        num_image_tokens=(image_size // patch) ** 2,
        initializer_range=text.initializer_range,
    )
    vq_config = JanusVQVAEConfig(**vq, projection_dim=text.hidden_size, image_token_embed_dim=text.hidden_size,
                                 initializer_range=text.initializer_range)
    return JanusConfig(text_config=text, vision_config=vision_config, vq_config=vq_config,
                       image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token), tie_word_embeddings=False)


# ---------------------------------------------------------------- filling the model


def fill_model(config, pretrained: dict[str, torch.Tensor], seed: int, dtype: torch.dtype,
               fresh_prefixes: tuple[str, ...] = FRESH_PREFIXES):
    """A JanusForConditionalGeneration holding `pretrained`, every other tensor freshly initialised from `seed`.

    Fresh tensors follow transformers' own init for Linear/Embedding (normal(0, initializer_range),
    zero bias), drawn in fp32 from one generator in parameter order, so the same seed gives the
    same heads whatever --dtype is. Vocabulary rows the LLM lacks (tokens added for Janus beyond
    its vocab_size) are fresh too.
    """
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    model.to_empty(device="cpu")
    model.to(dtype)
    generator = torch.Generator().manual_seed(seed)
    std = config.text_config.initializer_range
    expected = dict(model.state_dict())
    unexpected = sorted(set(pretrained) - set(expected))
    if unexpected:
        raise AssembleError(f"source tensors with no place in the Janus model: {unexpected[:5]}")
    fresh = []
    with torch.no_grad():
        for name, target in expected.items():
            source = pretrained.get(name)
            if source is None:
                if not name.startswith(fresh_prefixes):
                    raise AssembleError(f"no source tensor for {name} (an input dir lacks it)")
                target.copy_(_fresh(name, target.shape, std, generator))
                fresh.append(name)
                continue
            if source.shape == target.shape:
                target.copy_(source)
            elif name in ("model.language_model.embed_tokens.weight", "lm_head.weight") and source.shape[1:] == target.shape[1:] \
                    and source.shape[0] < target.shape[0]:
                target[: source.shape[0]].copy_(source)  # rows for the added special tokens start fresh
                target[source.shape[0]:].copy_(_fresh(name, target[source.shape[0]:].shape, std, generator))
            else:
                raise AssembleError(f"{name}: the source has shape {tuple(source.shape)}, the assembled model needs "
                                    f"{tuple(target.shape)} (dims of the LLM / SigLIP / VQ do not fit each other)")
    _recompute_buffers(model)
    return model, fresh


def _fresh(name: str, shape, std: float, generator: torch.Generator) -> torch.Tensor:
    if name.endswith(".bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=generator) * std


def _recompute_buffers(model: nn.Module) -> None:
    """Non-persistent buffers (rotary inv_freq, position ids) are not in any checkpoint; to_empty left them garbage."""
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "config"):  # rotary embeddings: rebuild from the config
            rebuilt = type(module)(module.config)
            for name, buffer in rebuilt.named_buffers(recurse=False):
                getattr(module, name).copy_(buffer)
        if hasattr(module, "position_ids") and isinstance(module.position_ids, torch.Tensor):
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand_as(module.position_ids))


# ---------------------------------------------------------------- the command


def assemble(llm_dir: str | Path, siglip_dir: str | Path, vq_path: str | Path, out_dir: str | Path,
             dtype: str = "bfloat16", seed: int = 0, allow_pickle: bool = False) -> dict:
    """Build and save the stage-I base; returns a summary (sizes, fresh tensor names, token ids)."""
    from model.tiny import set_generation_defaults

    if dtype not in DTYPES:
        raise AssembleError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    llm_dir, siglip_dir, vq_path, out = Path(llm_dir), Path(siglip_dir), Path(vq_path), Path(out_dir)
    llm_cfg, llm_w = load_llm(llm_dir)
    vis_cfg, vis_w = load_siglip(siglip_dir)
    vq_cfg, vq_w = load_vq(vq_path, allow_pickle)
    image_size, patch = vis_cfg["image_size"], vis_cfg["patch_size"]
    processor = build_processor(llm_dir, siglip_dir, image_size, (image_size // patch) ** 2)
    config = janus_config_from_parts(llm_cfg, vis_cfg, vq_cfg, processor.tokenizer)
    model, fresh = fill_model(config, {**llm_w, **vis_w, **vq_w}, seed, DTYPES[dtype])
    set_generation_defaults(model, processor.tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    summary = {
        "llm": str(llm_dir), "siglip": str(siglip_dir), "vq": str(vq_path), "seed": seed, "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "fresh_tensors": fresh,
        "vocab_size": config.text_config.vocab_size, "llm_vocab_size": llm_cfg["vocab_size"],
        "image_tokens": config.vision_config.num_image_tokens, "image_size": image_size,
        "codebook_l2_normalised": True,
    }
    (out / "assemble.json").write_text(json.dumps(summary, indent=2))
    log.info("assembled %s: %d parameters, %d fresh tensors", out, summary["parameters"], len(fresh))
    return summary
