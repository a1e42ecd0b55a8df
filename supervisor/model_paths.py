"""ComfyUI's extra model paths file, pointing every model folder at the read-only models volume."""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.durable import replace_whole

# ComfyUI 0.8.0's model folder names. "clip" and "unet" are the legacy names many model trees still use;
# ComfyUI maps them onto text_encoders and diffusion_models, so both layouts work.
MODEL_FOLDERS = (
    "audio_encoders", "checkpoints", "classifiers", "clip", "clip_vision", "configs", "controlnet",
    "diffusers", "diffusion_models", "embeddings", "gligen", "hypernetworks", "latent_upscale_models",
    "loras", "model_patches", "photomaker", "style_models", "text_encoders", "unet", "upscale_models",
    "vae", "vae_approx",
)


def render_model_paths(models_dir: Path) -> str:
    # JSON strings are valid double-quoted YAML scalars: any path is quoted correctly without a YAML library.
    # Absolute: ComfyUI resolves a relative base_path against this file's folder, not the MODELS_DIR checked at start.
    lines = [
        "# Written by comfy-supervisor at start-up from MODELS_DIR; edits are overwritten.",
        "serverless_models:",
        f"  base_path: {json.dumps(os.path.abspath(models_dir))}",
        "  is_default: true",
        *(f"  {folder}: {json.dumps(folder + '/')}" for folder in MODEL_FOLDERS),
    ]
    return "\n".join(lines) + "\n"


def write_model_paths(path: Path, models_dir: Path) -> None:
    """Whole or not at all: a crash or a full disk mid-write leaves the previous file, never half a YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, render_model_paths(models_dir), path.with_name(f".{path.name}.partial"))
