"""`janus-forge assemble` and `convert-deepseek` on tiny stand-ins built offline in each source format.

The stand-ins have the real parts' layouts at toy sizes: a LlamaForCausalLM dir with a tokenizer
that, like DeepSeek-LLM's, has no Janus tokens and no pad token; a SiglipVisionModel dir; a VQ in
LlamaGen's key layout (a `{"model": state_dict}` .pt, as LlamaGen publishes it) and as a
JanusVQVAE dir; and a checkpoint in the original deepseek-ai/Janus layout.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    JanusVQVAE,
    JanusVQVAEConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from model.assemble import AssembleError, assemble
from model.tiny import load_janus
from model.tokenizer import BOS, CORPUS, EOS

IMAGE_SIZE, PATCH = 32, 4  # grid 8 x 8 for both towers: the VQ downsamples by 4 too
VQ_MULT = [1, 1, 2]  # a channel change between levels, so LlamaGen's nin_shortcut convs are exercised


def _llm_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with only BOS/EOS, like DeepSeek-LLM's before Janus adds its tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)


def make_llm(path: Path, seed: int = 1) -> Path:
    tokenizer = _llm_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_siglip(path: Path, seed: int = 2) -> Path:
    config = SiglipVisionConfig(hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=PATCH)
    torch.manual_seed(seed)
    SiglipVisionModel(config).save_pretrained(path)
    return path


def make_janus_vq(seed: int = 3) -> JanusVQVAE:
    config = JanusVQVAEConfig(embed_dim=8, num_embeddings=64, base_channels=32, latent_channels=32,
                              channel_multiplier=VQ_MULT, num_res_blocks=1, num_patches=IMAGE_SIZE // PATCH)
    torch.manual_seed(seed)
    vq = JanusVQVAE(config).eval()
    with torch.no_grad():  # LlamaGen's stored codebook is not unit-norm; make sure ours is not either
        vq.quantize.embedding.weight.mul_(3.0)
    return vq


# The inverse of model.assemble's LlamaGen renames, written out by hand so the test does not
# check the mapping against itself.
def janus_vq_to_llamagen(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", key)
        key = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.conv_blocks.\1.", key)
        key = re.sub(r"^decoder\.up\.(\d+)\.block\.", r"decoder.conv_blocks.\1.res.", key)
        key = re.sub(r"^decoder\.up\.(\d+)\.", r"decoder.conv_blocks.\1.", key)
        key = key.replace("mid.block_1.", "mid.0.").replace("mid.attn_1.", "mid.1.").replace("mid.block_2.", "mid.2.")
        out[key] = value.clone()
    out["quantize.codebook_used"] = torch.zeros(state["quantize.embedding.weight"].shape[0])  # LlamaGen keeps one
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assemble_parts")
    vq = make_janus_vq()
    vq.save_pretrained(root / "vq_janus")
    llamagen = root / "vq_llamagen.pt"
    torch.save({"model": janus_vq_to_llamagen(vq.state_dict()), "steps": 0}, llamagen)
    return {"llm": make_llm(root / "llm"), "siglip": make_siglip(root / "siglip"), "vq_pt": llamagen,
            "vq_dir": root / "vq_janus"}


@pytest.fixture(scope="module")
def assembled(parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("assembled") / "base"
    assemble(parts["llm"], parts["siglip"], parts["vq_pt"], out, dtype="float32", seed=7)
    return out


def test_assemble_copies_pretrained_weights(parts, assembled):
    model, processor = load_janus(assembled)
    llm = LlamaForCausalLM.from_pretrained(parts["llm"])
    siglip = SiglipVisionModel.from_pretrained(parts["siglip"]).eval()
    n = llm.config.vocab_size
    sd = model.state_dict()
    for key, value in llm.state_dict().items():
        target = "lm_head.weight" if key == "lm_head.weight" else "model.language_model." + key[len("model."):]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            torch.testing.assert_close(sd[target][:n], value, rtol=0, atol=0)
        else:
            torch.testing.assert_close(sd[target], value, rtol=0, atol=0)
    # The tower computes what SigLIP computed (features, not just tensors).
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        ours = model.model.vision_model(pixels).last_hidden_state
        theirs = siglip(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # VQ: every tensor but the codebook is copied; the codebook is the L2-normalised source, and
    # encode picks the ids LlamaGen's l2-norm quantiser picks (largest cosine to the raw codes).
    vq = make_janus_vq()
    for key, value in vq.state_dict().items():
        ours = sd["model.vqmodel." + key]
        if key == "quantize.embedding.weight":
            torch.testing.assert_close(ours, torch.nn.functional.normalize(value, dim=-1))
        else:
            torch.testing.assert_close(ours, value, rtol=0, atol=0)
    with torch.no_grad():
        ids = model.model.vqmodel.encode(pixels).image_tokens.view(2, -1)
        z = torch.nn.functional.normalize(vq.quant_conv(vq.encoder(pixels)).permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
        expected = (z @ torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1).t()).argmax(-1).view(2, -1)
    assert torch.equal(ids, expected)


def test_assemble_tokenizer_and_config(parts, assembled):
    model, processor = load_janus(assembled)
    tok = processor.tokenizer
    llm_vocab = LlamaConfig.from_pretrained(parts["llm"]).vocab_size
    for name in ("<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|User|>", "<|Assistant|>", "<｜▁pad▁｜>"):
        assert tok.convert_tokens_to_ids(name) >= llm_vocab, name  # added after the LLM's own tokens
        assert tok.tokenize(f"a {name} b").count(name) == 1  # never split
    assert model.config.text_config.vocab_size == len(tok) == llm_vocab + 6
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image_placeholder>")
    assert tok.pad_token == "<｜▁pad▁｜>" and tok.padding_side == "left"
    assert model.config.vision_config.num_image_tokens == (IMAGE_SIZE // PATCH) ** 2 == model.config.vq_config.num_patches**2
    assert model.model.vision_model.config.hidden_size == 48 and model.model.aligner.fc1.out_features == 64
    # The processor expands an image placeholder into one token per vision patch.
    from PIL import Image

    batch = processor(text=["<image_placeholder> what is it?"], images=[Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))],
                      return_tensors="pt")
    assert (batch["input_ids"] == model.config.image_token_id).sum() == 64
    assert model.generation_config.generation_kwargs["boi_token_id"] == tok.convert_tokens_to_ids("<begin_of_image>")


def _fresh_tensors(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out = {k: v for k, v in sd.items() if k.startswith(("model.aligner.", "model.generation_"))}
    return out


def test_assemble_fresh_parts_are_seeded(parts, assembled, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    summary = assemble(parts["llm"], parts["siglip"], parts["vq_pt"], again, dtype="float32", seed=7)
    assemble(parts["llm"], parts["siglip"], parts["vq_pt"], other, dtype="float32", seed=8)
    a, b, c = (_fresh_tensors(load_janus(d)[0]) for d in (assembled, again, other))
    assert set(a) == {k for k in summary["fresh_tensors"]} and len(a) == 13  # 2 aligners x 2 linears, 2 head linears (w, b each) + embeddings
    for key in a:
        assert torch.equal(a[key], b[key]), key
        if not key.endswith(".bias"):
            assert not torch.equal(a[key], c[key]), key
            assert 0.01 < a[key].std().item() < 0.03, key  # normal(0, initializer_range=0.02)
    # Embedding rows added for Janus's tokens are fresh and seeded too.
    emb = [load_janus(d)[0].model.language_model.embed_tokens.weight[-6:] for d in (assembled, again, other)]
    assert torch.equal(emb[0], emb[1]) and not torch.equal(emb[0], emb[2])


def test_assemble_vq_formats_agree_and_dtype(parts, assembled, tmp_path):
    """A JanusVQVAE dir gives the same base as LlamaGen's .pt; --dtype bfloat16 is the float32 base rounded."""
    from_dir = tmp_path / "from_dir"
    bf16 = tmp_path / "bf16"
    assemble(parts["llm"], parts["siglip"], parts["vq_dir"], from_dir, dtype="float32", seed=7)
    assemble(parts["llm"], parts["siglip"], parts["vq_pt"], bf16, dtype="bfloat16", seed=7)
    ref = load_janus(assembled)[0].state_dict()
    same = load_janus(from_dir)[0].state_dict()
    half = load_janus(bf16)[0].state_dict()
    assert set(ref) == set(same) == set(half)
    for key in ref:
        assert torch.equal(ref[key], same[key]), key
        assert half[key].dtype == torch.bfloat16 and torch.equal(half[key], ref[key].to(torch.bfloat16)), key


def test_assemble_reads_a_full_siglip_model_dir(parts, tmp_path):
    """Published SigLIP checkpoints are full SiglipModel dirs (text + vision): only the vision tower is used."""
    from transformers import SiglipConfig, SiglipModel, SiglipTextConfig

    vision = SiglipVisionConfig.from_pretrained(parts["siglip"])
    config = SiglipConfig(text_config=SiglipTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, vocab_size=100).to_dict(),
                          vision_config=vision.to_dict())
    torch.manual_seed(5)
    full = SiglipModel(config)
    full.save_pretrained(tmp_path / "siglip_full")
    assemble(parts["llm"], tmp_path / "siglip_full", parts["vq_pt"], tmp_path / "base", dtype="float32")
    model, _ = load_janus(tmp_path / "base")
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.model.vision_model(pixels).last_hidden_state,
                                   full.eval().vision_model(pixel_values=pixels).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_assemble_real_scale_dims_match_janus_pro_1b():
    """At Janus-Pro-1B's dims (DeepSeek-LLM 2048 x 24, SigLIP-L/16-384, LlamaGen VQ-16), on the meta
    device (no memory): the VQ config read off LlamaGen-layout shapes is VQ-16's, and the assembled
    model has exactly the tensor shapes of the transformers Janus-Pro-1B layout (whose converter
    uses JanusVisionConfig / JanusVQVAEConfig defaults, i.e. SigLIP-L and VQ-16)."""
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusVisionConfig

    from model.assemble import janus_config_from_parts, llamagen_to_janus_vq, vq_config_from_llamagen
    from model.tokenizer import train_tokenizer

    with torch.device("meta"):
        vq16 = JanusVQVAE(JanusVQVAEConfig()).state_dict()
    llamagen = janus_vq_to_llamagen(vq16)
    fields = vq_config_from_llamagen(llamagen)
    assert fields == {"embed_dim": 8, "num_embeddings": 16384, "base_channels": 128, "channel_multiplier": [1, 1, 2, 2, 4],
                      "num_res_blocks": 2, "latent_channels": 256, "in_channels": 3, "out_channels": 3}
    assert set(llamagen_to_janus_vq(llamagen)) == set(vq16)
    text = LlamaConfig(vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=16, max_position_embeddings=16384, rms_norm_eps=1e-6)
    siglip_l = SiglipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=384, patch_size=16)
    tokenizer = train_tokenizer()
    ours = janus_config_from_parts(text.to_dict(), siglip_l.to_dict(), fields, tokenizer)
    assert ours.vision_config.num_image_tokens == 576 and ours.vq_config.num_patches == 24
    reference = JanusConfig(text_config=text, vision_config=JanusVisionConfig(projection_dim=2048),
                            vq_config=JanusVQVAEConfig(projection_dim=2048, image_token_embed_dim=2048), tie_word_embeddings=False)
    with torch.device("meta"):
        a = {k: v.shape for k, v in JanusForConditionalGeneration(ours).state_dict().items()}
        b = {k: v.shape for k, v in JanusForConditionalGeneration(reference).state_dict().items()}
    assert a == b
    assert 2.0e9 < sum(torch.Size(s).numel() for s in a.values()) < 2.2e9  # 2.08B: Janus-Pro-1B with its towers


def test_assemble_stage1_step_trains_only_table2_groups(assembled, tmp_path):
    """One stage-I step of the project's Trainer from the assembled base, with the 1B recipe's
    trainable groups (Table 2): the aligners, generation embeddings and head move; the LLM, lm_head,
    SigLIP and the VQ do not. Image ids are encoded by the assembled VQ (no pre-computed ids)."""
    import yaml
    from safetensors.torch import load_file

    from model.config import load_train_recipe
    from model.train import Trainer
    from tests.model.conftest import sample_rows, write_shards

    ratio = {"understanding": 1, "text": 0, "generation": 3}
    build = write_shards(tmp_path / "build", "stage1", sample_rows(16, ratio, seed=1, grid=IMAGE_SIZE // PATCH), 8, ratio)
    raw = yaml.safe_load(Path("recipes/train/tiny/stage1.yaml").read_text())
    raw.update(samples={"prompts": [], "questions": 0}, schedule={"kind": "constant", "warmup_steps": 0, "steps": 1},
               batch={"size": 8, "micro": 4}, eval=None)
    raw["trainable"] = yaml.safe_load(Path("recipes/train/janus-pro-1b/stage1.yaml").read_text())["trainable"]
    recipe_path = tmp_path / "stage1.yaml"
    recipe_path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
    final = Trainer(load_train_recipe(recipe_path, data=build, init=assembled), tmp_path / "run").train()
    before, after = load_file(assembled / "model.safetensors"), load_file(final / "model.safetensors")
    assert before.keys() == after.keys()
    moved = {k.split(".")[1] if k.startswith("model.") else k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"aligner", "generation_embeddings", "generation_aligner", "generation_head"}
    log = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert len(log) == 1 and set(log[0]["loss"]) == {"understanding", "generation"}, log
    # A fresh image head with small weights predicts near-uniformly over the 64 codes: ln 64 = 4.16.
    assert abs(log[0]["loss"]["generation"] - math.log(64)) < 0.1, log


def test_assemble_errors_name_the_problem(parts, tmp_path):
    with pytest.raises(AssembleError, match="LLM dir .* does not exist"):
        assemble(tmp_path / "nope", parts["siglip"], parts["vq_pt"], tmp_path / "o")
    with pytest.raises(AssembleError, match="model_type='siglip_vision_model'; expected"):
        assemble(parts["siglip"], parts["siglip"], parts["vq_pt"], tmp_path / "o")
    small = make_siglip(tmp_path / "siglip8", seed=4)
    cfg = json.loads((small / "config.json").read_text())
    cfg["patch_size"] = 8
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AssembleError, match="VQ downsamples by 4 .* patch_size is 8"):
        assemble(parts["llm"], small, parts["vq_pt"], tmp_path / "o")
    bad = tmp_path / "bad_vq.pt"
    torch.save({"model": {"encoder.conv_in.weight": torch.zeros(1)}}, bad)
    with pytest.raises(AssembleError, match="not LlamaGen's VQ layout"):
        assemble(parts["llm"], parts["siglip"], bad, tmp_path / "o")
    # A training checkpoint carrying Python objects (LlamaGen keeps its argparse args) is not read
    # unless the user vouches for it.
    import argparse

    from model.assemble import load_vq

    pickled = tmp_path / "vq_with_args.pt"
    torch.save({"model": torch.load(parts["vq_pt"], weights_only=True)["model"], "args": argparse.Namespace(vq_model="VQ-16")}, pickled)
    with pytest.raises(AssembleError, match="could not be read as plain tensors.*--allow-pickle"):
        assemble(parts["llm"], parts["siglip"], pickled, tmp_path / "o")
    assert load_vq(pickled, allow_pickle=True)[0]["channel_multiplier"] == VQ_MULT
    with pytest.raises(AssembleError, match="dtype='fp8'"):
        assemble(parts["llm"], parts["siglip"], parts["vq_pt"], tmp_path / "o", dtype="fp8")


# ---------------------------------------------------------------- convert-deepseek


def janus_to_deepseek_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers Janus state dict in deepseek-ai/Janus names (the inverse of the converter, by hand)."""
    out, vq = {}, {}
    for key, value in state.items():
        value = value.clone()
        if key.startswith("model.language_model."):
            out["language_model.model." + key[len("model.language_model."):]] = value
        elif key == "lm_head.weight":
            out["language_model.lm_head.weight"] = value
        elif key.startswith("model.vqmodel."):
            vq[key[len("model.vqmodel."):]] = value
        elif key.startswith("model.vision_model."):
            rest = key[len("model.vision_model."):]
            tower = "vision_model.vision_tower."
            if rest == "embeddings.position_embedding.weight":
                out[tower + "pos_embed"] = value.unsqueeze(0)
            elif rest.startswith("embeddings.patch_embedding."):
                out[tower + "patch_embed.proj." + rest.split(".")[-1]] = value
            elif rest.startswith("post_layernorm."):
                out[tower + "norm." + rest.split(".")[-1]] = value
            else:
                m = re.match(r"encoder\.layers\.(\d+)\.(.+)$", rest)
                layer, name = m.groups()
                block = f"{tower}blocks.{layer}."
                if name.startswith("self_attn.q_proj."):
                    kind = name.split(".")[-1]
                    parts = [state[f"model.vision_model.encoder.layers.{layer}.self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
                    out[block + "attn.qkv." + kind] = torch.cat(parts, 0)
                elif name.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                    continue
                else:
                    name = (name.replace("self_attn.projection_layer.", "attn.proj.")
                            .replace("layer_norm1.", "norm1.").replace("layer_norm2.", "norm2."))
                    out[block + name] = value
        else:
            for ours, theirs in (("model.generation_aligner.", "gen_aligner."), ("model.aligner.", "aligner.")):
                if key.startswith(ours):
                    rest = key[len(ours):]
                    if rest.startswith("fc1."):
                        out[theirs + "layers.0." + rest[4:]] = value
                    else:
                        i, kind = re.match(r"hidden_layers\.(\d+)\.(\w+)$", rest).groups()
                        out[f"{theirs}layers.{2 * int(i) + 2}.{kind}"] = value
                    break
            else:
                renamed = (key.replace("model.generation_head.proj_out.", "gen_head.output_mlp_projector.")
                           .replace("model.generation_head.vision_head.", "gen_head.vision_head.")
                           .replace("model.generation_embeddings.", "gen_embed."))
                assert renamed != key, key
                out[renamed] = value
    out.update({"gen_vision_model." + k: v for k, v in janus_vq_to_llamagen(vq).items()})
    hidden = state["model.vision_model.embeddings.patch_embedding.weight"].shape[0]
    out["vision_model.vision_tower.attn_pool.latent"] = torch.zeros(1, 1, hidden)  # Janus keeps SigLIP's pool; unused
    return out


def write_deepseek_checkpoint(tiny_dir: Path, out: Path) -> Path:
    """The tiny-random Janus in deepseek-ai/Janus's layout: config.json sections, pytorch_model.bin, tokenizer."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    cfg = json.loads((tiny_dir / "config.json").read_text())
    text, vision, vq = cfg["text_config"], cfg["vision_config"], cfg["vq_config"]
    out.mkdir(parents=True)
    config = {
        "model_type": "multi_modality",
        "language_config": {k: text[k] for k in ("hidden_size", "intermediate_size", "max_position_embeddings",
                                                 "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "vocab_size")},
        "vision_config": {"cls": "CLIPVisionTower", "params": {"image_size": vision["image_size"], "model_name": "siglip_tiny",
                                                               "num_heads": vision["num_attention_heads"], "select_layer": -1}},
        "aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "input_dim": vision["hidden_size"],
                                                             "n_embed": text["hidden_size"], "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": vq["num_embeddings"], "n_embed": vq["embed_dim"]}},
        "gen_aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "input_dim": vq["embed_dim"],
                                                                 "n_embed": text["hidden_size"], "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "params": {"image_token_embed": text["hidden_size"],
                                                             "image_token_size": vq["num_embeddings"], "n_embed": text["hidden_size"]}},
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "preprocessor_config.json").write_text(json.dumps({"image_size": vision["image_size"], "min_size": 14,
                                                              "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    torch.save(janus_to_deepseek_state(load_file(tiny_dir / "model.safetensors")), out / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    return out


def test_assemble_convert_deepseek_matches_logits(tmp_path):
    from model.deepseek_janus import convert_deepseek
    from model.tiny import build_tiny_janus

    tiny = build_tiny_janus(tmp_path / "tiny", "tiny-random")
    src = write_deepseek_checkpoint(tiny, tmp_path / "deepseek")
    summary = convert_deepseek(src, tmp_path / "converted")
    ref, processor = load_janus(tiny)
    got, got_processor = load_janus(tmp_path / "converted")
    assert summary["parameters"] == sum(p.numel() for p in ref.parameters())
    assert got.config.image_token_id == ref.config.image_token_id
    assert got_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = torch.tensor([[0] + [ref.config.image_token_id] * 64 + list(range(20, 30))] * 2)
    image_ids = torch.randint(0, ref.config.vq_config.num_embeddings, (2, 64))
    with torch.no_grad():
        outs = []
        for model in (ref, got):
            understanding = model(input_ids=ids, pixel_values=pixels).logits
            embeds = model.model.generation_aligner(model.model.generation_embeddings(image_ids))
            hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
            outs.append((understanding, model.model.generation_head(hidden), model.model.vqmodel.decode(image_ids)))
    (und_ref, gen_ref, img_ref), (und_got, gen_got, img_got) = outs
    torch.testing.assert_close(und_got, und_ref, rtol=0, atol=0)  # text logits with image features
    torch.testing.assert_close(gen_got, gen_ref, rtol=0, atol=0)  # image-head logits over VQ ids
    # decode normalises the (now pre-normalised) codebook again: equal up to float rounding
    torch.testing.assert_close(img_got, img_ref, rtol=0, atol=1e-5)
    # Every tensor but the codebook (stored unit-norm) is the source's.
    sd_ref, sd_got = ref.state_dict(), got.state_dict()
    assert set(sd_ref) == set(sd_got)
    for key in sd_ref:
        if key != "model.vqmodel.quantize.embedding.weight":
            assert torch.equal(sd_ref[key], sd_got[key]), key


def test_assemble_convert_deepseek_errors(tmp_path):
    from model.deepseek_janus import convert_deepseek
    from model.tiny import build_tiny_janus

    with pytest.raises(AssembleError, match="does not exist"):
        convert_deepseek(tmp_path / "nope", tmp_path / "o")
    tiny = build_tiny_janus(tmp_path / "tiny", "tiny-random")
    with pytest.raises(AssembleError, match="already in the transformers Janus layout"):
        convert_deepseek(tiny, tmp_path / "o")
    src = write_deepseek_checkpoint(tiny, tmp_path / "deepseek")
    cfg = json.loads((src / "config.json").read_text())
    del cfg["vision_config"]["params"]["num_heads"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AssembleError, match="add its head count as vision_config.params.num_heads"):
        convert_deepseek(src, tmp_path / "o")


def test_assemble_cli_mounted_in_janus_forge(parts, tmp_path, capsys):
    """`janus-forge assemble` / `convert-deepseek` parse, run and report user errors in one line (exit 2)."""
    from pipeline.cli import main

    out = tmp_path / "base"
    rc = main(["assemble", "--llm", str(parts["llm"]), "--siglip", str(parts["siglip"]), "--vq", str(parts["vq_pt"]),
               "--out", str(out), "--dtype", "float32", "--seed", "7"])
    assert rc == 0 and "stage-I base at" in capsys.readouterr().out
    assert json.loads((out / "assemble.json").read_text())["seed"] == 7
    load_janus(out)
    rc = main(["assemble", "--llm", str(tmp_path / "missing"), "--siglip", str(parts["siglip"]), "--vq", str(parts["vq_pt"]),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "janus-forge assemble: error: LLM dir" in capsys.readouterr().err
    rc = main(["convert-deepseek", str(out), str(tmp_path / "o2")])
    assert rc == 2 and "already in the transformers Janus layout" in capsys.readouterr().err
