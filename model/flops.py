"""Model FLOPs of one Janus-Pro training step, from the config, and peak TFLOP/s per GPU (for MFU).

Counting follows PaLM (Chowdhery et al. 2022, appendix B) and nanoGPT's `estimate_mfu`: only
matrix multiplies count (a multiply-add is 2 FLOPs; norms, activations, softmax, CE and embedding
lookups are noise at scale); a dense layer applied to one token costs 2*P forward, 2*P for the
gradient of its input and 2*P for the gradient of its weight, so a fully trained stack costs
6*N per token; attention scores and values cost 4*d*T per token and layer forward (T = the
example's length, the whole T x T square as PaLM counts it, not the causal half) and twice
that backward: together PaLM's 6N + 12*L*d*T.

Janus is not one stack, so each part is counted for the tokens that go through it, and the
backward only for the gradients that autograd really computes in the stage (Table 2 freezes
most parts):
- LLM (LLaMA): every sequence position; lm_head: text target positions only (model/losses.py
  scores only those); generation head: image target positions;
- vision tower (SigLIP) + aligner: num_patches positions per understanding image;
- generation aligner: fed VQ ids (the embedding lookup before it is free);
- a part's weight gradient costs 2*P per token when the part trains; its input gradient costs
  2*P (and attention 8*d*T) when any part before it trains, e.g. stage I's frozen LLM still
  runs a backward (4*N per token) because the aligners in front of it train.
The VQ encoder that tokenises images on the fly runs under no_grad in the data loader and is
data preparation (the paper pre-tokenises), so it is not counted: MFU is useful model work only.
Padding is not counted either, so padding waste shows as lower MFU.
tests/model/test_mfu.py checks the count against torch.utils.flop_counter.FlopCounterMode.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense (no sparsity) peak TFLOP/s per GPU from NVIDIA's datasheets, matched by substring of
# torch.cuda.get_device_name() in this order (first match wins). "fp32" is the non-tensor-core
# figure: PyTorch does not use TF32 for matmuls unless asked (torch.backends.cuda.matmul.allow_tf32).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("GB200", {"bf16": 2500.0, "fp32": 80.0}),
    ("B200", {"bf16": 2250.0, "fp32": 80.0}),
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
    ("A10G", {"bf16": 70.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp32": 31.2}),
    ("RTX 4090", {"bf16": 165.2, "fp32": 82.6}),
]


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Peak dense TFLOP/s of one GPU for the compute dtype, or None when the GPU is not in the table."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks[precision]
    return None


@dataclass(frozen=True)
class StepTokens:
    """What went through each part of the model in one step (or one micro-batch)."""

    positions: int  # LLM sequence positions (padding excluded)
    attention: int  # sum over examples of length**2: the attention squares
    images: int  # understanding images through the vision tower
    text_targets: int  # positions scored by lm_head
    image_targets: int  # positions scored by the generation head
    image_inputs: int  # VQ ids fed through the generation aligner

    @classmethod
    def of_step(cls, lengths: list[int], rows: dict[str, int], targets: dict[str, int]) -> StepTokens:
        """From the loader's per-example lengths, rows and target tokens per task (model/loader.py).

        A generation row feeds all its VQ ids but the last and predicts all of them.
        """
        gen_targets = targets.get("generation", 0)
        return cls(positions=sum(lengths), attention=sum(n * n for n in lengths), images=rows.get("understanding", 0),
                   text_targets=targets.get("understanding", 0) + targets.get("text", 0),
                   image_targets=gen_targets, image_inputs=gen_targets - rows.get("generation", 0))


def _passes(forward: float, weights: bool, inputs: bool) -> float:
    """Forward + the backward matmuls autograd runs: weight gradient and/or input gradient."""
    return forward * (1 + weights + inputs)


def _attention(forward: float, grad: bool) -> float:
    """Scores and values have no weights, but both operands of each product need a gradient."""
    return forward * (1 + 2 * grad)


class JanusFlops:
    """Training FLOPs of JanusForConditionalGeneration for a set of trained module groups.

    `trained`: the groups (model/config.py MODULE_GROUPS) whose parameters require grad.
    """

    def __init__(self, config, trained: set[str]):
        self.config, self.trained = config, set(trained)

    def step(self, t: StepTokens) -> float:
        return sum(self.parts(t).values())

    def parts(self, t: StepTokens) -> dict[str, float]:
        """FLOPs per part (forward and backward) for the tokens `t`."""
        text, vision, vq = self.config.text_config, self.config.vision_config, self.config.vq_config
        trains = self.trained.__contains__
        # Gradient reaches a part's input when something before it trains (vision tower <- pixels).
        vision_grad = trains("vision_model")
        aligner_grad = vision_grad or trains("aligner")
        gen_aligner_grad = trains("generation_embeddings") or trains("generation_aligner")
        llm_grad = trains("language_model") or aligner_grad or gen_aligner_grad
        out = {}

        # SigLIP: patch embedding (a conv = one matmul per patch; pixels need no gradient) and layers.
        d, patches = vision.hidden_size, (vision.image_size // vision.patch_size) ** 2
        tokens = t.images * patches
        patch_embed = 2 * vision.num_channels * vision.patch_size**2 * d * tokens
        per_layer = 2 * (4 * d * d + 2 * d * int(d * vision.mlp_ratio)) * tokens
        attn = 4 * d * patches * tokens
        out["vision_model"] = (_passes(patch_embed, vision_grad, False)
                               + vision.num_hidden_layers * (_passes(per_layer, vision_grad, vision_grad)
                                                             + _attention(attn, vision_grad)))
        out["aligner"] = self._mlp(d, vision.projection_dim, vision.depth, tokens, trains("aligner"), vision_grad)

        out["generation_aligner"] = self._mlp(vq.embed_dim, vq.projection_dim, vq.num_hidden_layers, t.image_inputs,
                                              trains("generation_aligner"), trains("generation_embeddings"))

        # LLaMA: q, k, v (grouped-query: k and v are kv_heads wide), o, gated MLP; attention squares.
        d = text.hidden_size
        head_dim = getattr(text, "head_dim", None) or d // text.num_attention_heads
        q, kv = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
        per_layer = 2 * (d * q + 2 * d * kv + q * d + 3 * d * text.intermediate_size) * t.positions
        attn = 4 * q * t.attention
        out["language_model"] = text.num_hidden_layers * (_passes(per_layer, trains("language_model"), llm_grad)
                                                          + _attention(attn, llm_grad))
        out["lm_head"] = _passes(2 * d * text.vocab_size * t.text_targets, trains("lm_head"), llm_grad)

        # Generation head: proj_out (LLM hidden -> projection_dim), then vision_head -> codebook logits.
        head_grad = llm_grad or trains("generation_head")
        out["generation_head"] = (_passes(2 * vq.image_token_embed_dim * vq.projection_dim * t.image_targets,
                                          trains("generation_head"), llm_grad)
                                  + _passes(2 * vq.projection_dim * vq.num_embeddings * t.image_targets,
                                            trains("generation_head"), head_grad))
        return out

    @staticmethod
    def _mlp(d_in: int, width: int, depth: int, tokens: int, trains: bool, input_grad: bool) -> float:
        """Janus aligner MLP: d_in -> width, then depth - 1 layers width -> width."""
        first = _passes(2 * d_in * width * tokens, trains, input_grad)
        return first + (depth - 1) * _passes(2 * width * width * tokens, trains, input_grad or trains)
