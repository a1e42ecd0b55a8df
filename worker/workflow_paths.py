"""The workflow inputs ComfyUI joins to one of its folders as given: a name there must stay inside that folder.

Only ComfyUI's core nodes are covered; a custom node that joins a name it is given is not (docs/worker.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# ComfyUI 0.8.0's nodes.py and comfy_extras/ nodes that join a free string input to a folder unchecked (input → folder).
FOLDER_NAME_INPUTS: dict[str, dict[str, str]] = {
    # folder_paths.get_annotated_filepath: the input folder, or the folder a " [output]"/" [input]"/" [temp]" names
    "LoadImage": {"image": "input"},
    "LoadImageMask": {"image": "input"},
    "LoadImageOutput": {"image": "input"},
    "WebcamCapture": {"image": "input"},
    "LoadLatent": {"latent": "input"},
    "LoadAudio": {"audio": "input"},
    "RecordAudio": {"audio": "input"},
    "LoadVideo": {"file": "input"},
    "Load3D": {"image": "input"},  # an object whose 'image', 'mask', 'normal' and 'recording' are names
    # os.path.join(folder_paths.get_output_directory(), folder_name), then the files named from filename_prefix
    "SaveImageDataSetToFolder": {"folder_name": "output", "filename_prefix": "output"},
    "SaveImageTextDataSetToFolder": {"folder_name": "output", "filename_prefix": "output"},
    "SaveTrainingDataset": {"folder_name": "output"},
    "LoadTrainingDataset": {"folder_name": "output"},
    # ... and choices, which ComfyUI checks against its list only when written in the workflow, not when linked
    "LoadImageDataSetFromFolder": {"folder": "input"},
    "LoadImageTextDataSetFromFolder": {"folder": "input"},
    "GeminiInputFiles": {"file": "input"},
    "OpenAIInputFiles": {"file": "input"},
}

# folder_paths.annotated_filepath: a name ending so is in that folder, and it cuts the annotation with the
# character before it (name[:-9] for "[output]").
ANNOTATIONS = {"[output]": "output", "[input]": "input", "[temp]": "temp"}
# What os.path.join lets replace the folder: a leading separator, or a drive as Windows reads one.
ABSOLUTE = re.compile(r"[/\\]|[A-Za-z]:")
SEPARATOR = re.compile(r"[/\\]")  # a backslash separates on Windows: counted as one wherever ComfyUI runs


def check_folder_names(class_type: str, inputs: dict[str, Any]) -> str | None:
    """Why one of this node's file-name inputs leaves its folder ("input 'image': '../x.png' leaves ComfyUI's
    input folder") or may leave it (a link: the name another node makes is not known before it runs), or None."""
    for input_name, folder in FOLDER_NAME_INPUTS.get(class_type, {}).items():
        value = inputs.get(input_name)
        if isinstance(value, list):  # ComfyUI reads every list here as a link [node_id, output_index]
            source = f" to node {value[0]!r:.40}" if value and isinstance(value[0], str) else ""
            return (f"input {input_name!r} is linked{source}: ComfyUI would join the name that node makes to its "
                    f"{folder} folder unchecked; write the name in the workflow itself")
        for where, name in _names(input_name, value):
            stripped, named_folder = _annotation_cut(name) if folder == "input" else (name, None)
            if _leaves(name) or _leaves(stripped):
                return f"{where}: {name!r:.80} leaves ComfyUI's {named_folder or folder} folder"
    return None


def _names(input_name: str, value: object) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield f"input {input_name!r}", value
    elif isinstance(value, dict):  # Load3D's image
        for key, item in value.items():
            if isinstance(item, str):
                yield f"input {input_name!r} key {key!r:.40}", item


def _annotation_cut(name: str) -> tuple[str, str | None]:
    """folder_paths.annotated_filepath: the name it joins, and the folder its annotation names (None: none)."""
    for annotation, folder in ANNOTATIONS.items():
        if name.endswith(annotation):
            return name[: -len(annotation) - 1], folder
    return name, None


def _leaves(name: str) -> bool:
    return bool(ABSOLUTE.match(name)) or ".." in SEPARATOR.split(name)
