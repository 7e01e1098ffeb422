"""Loading open_clip towers and the LAION aesthetic head from local files, with start-up checks."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from stages.base import StageError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The published LAION improved-aesthetic-predictor v2 head (sac+logos+ava1, ViT-L/14 embeddings).
LAION_HEAD = "weights/laion-aesthetic/sac+logos+ava1-l14-linearMSE.pth"
SHARED_ENV = "JANUS_FORGE_SHARED"  # overrides where the shared/ folder lives


def shared_dir() -> Path:
    """The shared/ folder: $JANUS_FORGE_SHARED, else ../shared next to the repo root.

    A git worktree sits deeper than the main checkout, so the nearest ancestor holding a
    `shared/` folder wins; for the main checkout that is exactly ../shared.
    """
    if os.environ.get(SHARED_ENV):
        return Path(os.environ[SHARED_ENV]).expanduser()
    for parent in REPO_ROOT.parents:
        if (parent / "shared").is_dir():
            return parent / "shared"
    return REPO_ROOT.parent / "shared"


def resolve_file(value: str | None, recipe_dir: Path, default: Path | None = None) -> Path | None:
    """A path from a recipe: absolute, else relative to the recipe; None means the default."""
    if value is None:
        return default
    p = Path(value).expanduser()
    return p if p.is_absolute() else (recipe_dir / p)


class AestheticHead(nn.Module):
    """The LAION v2 MLP (no activations): Linear/Dropout stack mapping an embedding to 1-10."""

    def __init__(self, dims: list[int]):
        super().__init__()
        drops = [0.2, 0.2, 0.1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(drops):
                layers.append(nn.Dropout(drops[i]))
        self.layers = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding).squeeze(-1)


def read_head_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise StageError(f"aesthetic head weights not found: {path} (see shared/weights/laion-aesthetic/NOTICE.md)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or non-torch file: say which file, stop the build
        raise StageError(f"aesthetic head weights {path} could not be read: {err}") from err
    if not isinstance(state, dict) or "layers.0.weight" not in state:
        raise StageError(f"aesthetic head weights {path}: expected a state dict with layers.0.weight, got {list(state)[:5]}")
    return state


def head_input_dim(path: Path) -> int:
    return int(read_head_state(path)["layers.0.weight"].shape[1])


def load_aesthetic_head(path: Path) -> AestheticHead:
    """Build the head from the file's own shapes and load it strictly (every key must fit)."""
    state = read_head_state(path)
    weights = [k for k in state if k.endswith(".weight")]
    weights.sort(key=lambda k: int(k.split(".")[1]))
    dims = [int(state[weights[0]].shape[1])] + [int(state[k].shape[0]) for k in weights]
    head = AestheticHead(dims)
    head.load_state_dict(state, strict=True)
    return head.eval()


def clip_config(model_name: str, config_dir: Path | None) -> dict:
    """An open_clip architecture's config (nothing is built)."""
    import open_clip

    if config_dir is not None:
        if not config_dir.is_dir():
            raise StageError(f"clip_config_dir not found: {config_dir}")
        open_clip.add_model_config(config_dir)
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise StageError(f"unknown open_clip model {model_name!r}; known: {', '.join(open_clip.list_models()[:8])} ...")
    return cfg


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI released CLIP as TorchScript archives (a zip holding code/ and constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def check_activation(model_name: str, cfg: dict, weights: str) -> None:
    """OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain configs use GELU.

    The weights load into either without a complaint (the activation has no parameters), so the
    mismatch only shows as shifted embeddings and a moved aesthetic cut: stop at start-up instead.
    """
    if weights != "openai" or cfg.get("quick_gelu"):
        return
    import open_clip

    fix = f"{model_name}-quickgelu" if f"{model_name}-quickgelu" in open_clip.list_models() else None
    raise StageError(
        f"score_images.clip_model: {model_name!r} uses GELU, but OpenAI's CLIP weights (clip_weights: openai) were "
        f"trained with QuickGELU; they would load silently and shift every embedding. Use "
        + (f"clip_model: {fix}" if fix else "an open_clip config with \"quick_gelu\": true")
        + ", or set clip_weights: other if this file was not trained by OpenAI"
    )


def check_weights_fit(model_name: str, cfg: dict, pretrained: Path, weights: str) -> None:
    """Known mismatches between a weights file and the config, found without building the model."""
    if is_torchscript_archive(pretrained):
        if weights != "openai":
            raise StageError(
                f"score_images.clip_weights: {pretrained} is a TorchScript archive, the format OpenAI released CLIP in; "
                f"set clip_weights: openai (with a -quickgelu clip_model)"
            )
        return
    try:  # mmap: only the header is read, so checking a 1.7 GB file costs milliseconds
        state = torch.load(pretrained, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise StageError(f"score_images.clip_pretrained: {pretrained} could not be read as torch weights: {err}") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    want = {"text_projection": (1, int(cfg["embed_dim"]), "embedding size (embed_dim)"),
            "visual.conv1.weight": (0, int(cfg["vision_cfg"].get("width", 0)), "vision width"),
            "token_embedding.weight": (1, int(cfg["text_cfg"].get("width", 0)), "text width")}
    for key, (axis, size, what) in want.items():
        tensor = state.get(key)
        if tensor is not None and size and tensor.ndim > axis and int(tensor.shape[axis]) != size:
            raise StageError(
                f"score_images.clip_pretrained: {pretrained.name} has {what} {int(tensor.shape[axis])} ({key}) but "
                f"clip_model {model_name!r} has {size}; name the architecture these weights were trained as"
            )


def load_clip(model_name: str, pretrained: Path, config_dir: Path | None, device: str, precision: str = "fp32"):
    """(model, preprocess, tokenizer) from a local weights file; nothing is downloaded."""
    import open_clip

    if config_dir is not None:
        open_clip.add_model_config(config_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=str(pretrained), device=device, precision=precision, weights_only=True
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)
