"""Loading open_clip towers and the LAION aesthetic head from local files, with start-up checks."""

from __future__ import annotations

import os
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


def clip_embed_dim(model_name: str, config_dir: Path | None) -> int:
    """Embedding size of an open_clip architecture, from its config (nothing is built)."""
    import open_clip

    if config_dir is not None:
        if not config_dir.is_dir():
            raise StageError(f"clip_config_dir not found: {config_dir}")
        open_clip.add_model_config(config_dir)
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise StageError(f"unknown open_clip model {model_name!r}; known: {', '.join(open_clip.list_models()[:8])} ...")
    return int(cfg["embed_dim"])


def load_clip(model_name: str, pretrained: Path, config_dir: Path | None, device: str, precision: str = "fp32"):
    """(model, preprocess, tokenizer) from a local weights file; nothing is downloaded."""
    import open_clip

    if config_dir is not None:
        open_clip.add_model_config(config_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=str(pretrained), device=device, precision=precision, weights_only=True
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)
