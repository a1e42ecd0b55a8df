"""The images a job carries for its workflow to load by name (`metadata.images`, RunPod worker-comfyui's shape):
checked and decoded before anything reaches ComfyUI, which the worker then uploads them to (worker/comfyui.py)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

# The queue manager's cap on a job's metadata (docs/queue-manager-api.md): no more base64 than this is decoded.
MAX_METADATA_BYTES = 1 << 20
# img2img takes one, a ControlNet or an inpainting workflow two or three; more is a job that is not what it seems.
MAX_IMAGES = 16
MAX_NAME_CHARS = 128
# One file name: letters, digits and a few marks, never a leading dot (hidden files, "..") or a path separator.
# ASCII only: the name travels in a multipart header, where ComfyUI's server and ours need not agree on an encoding.
SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .()+,=@-]*")
DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]+(;[A-Za-z0-9=._+-]+)*;base64,")
NAME_RULE = (
    "a file name of letters, digits and _ .()+,=@- (ASCII, not starting with a dot, no '..'), optionally in one "
    f"folder ('alice/photo.png'), at most {MAX_NAME_CHARS} characters"
)


class InvalidImages(ValueError):
    """metadata.images is not what the worker can upload; the message names the field."""


@dataclass(frozen=True)
class InputImage:
    name: str  # as the workflow names it: "photo.png" or "alice/photo.png"
    data: bytes = field(repr=False)  # never in a log line or an error

    @property
    def subfolder(self) -> str:
        return self.name.rpartition("/")[0]

    @property
    def filename(self) -> str:
        return self.name.rpartition("/")[2]


def input_images(metadata: dict[str, Any]) -> tuple[InputImage, ...]:
    """The images in ``metadata["images"]``, decoded; none when the key is absent. InvalidImages names the first
    field that is wrong."""
    if "images" not in metadata:
        return ()
    entries = metadata["images"]
    if not isinstance(entries, list):
        raise InvalidImages(f"metadata.images: must be a list of {{name, image}} objects, got {type(entries).__name__}")
    if len(entries) > MAX_IMAGES:
        raise InvalidImages(f"metadata.images: {len(entries)} images, at most {MAX_IMAGES}")
    images: list[InputImage] = []
    base64_chars = 0
    for index, entry in enumerate(entries):
        where = f"metadata.images[{index}]"
        if not isinstance(entry, dict):
            raise InvalidImages(f"{where}: must be an object with 'name' and 'image', got {type(entry).__name__}")
        if missing := sorted({"name", "image"} - entry.keys()):
            raise InvalidImages(f"{where}: missing {', '.join(repr(key) for key in missing)}")
        if extra := sorted(str(key) for key in entry.keys() - {"name", "image"}):
            raise InvalidImages(
                f"{where}: unexpected {', '.join(repr(key)[:40] for key in extra)} (only 'name' and 'image')"
            )
        name = _checked_name(entry["name"], f"{where}.name")
        if any(image.name == name for image in images):
            raise InvalidImages(f"{where}.name: {name!r} is named twice")
        folder = name.rpartition("/")[0]
        for other, image in enumerate(images):  # ComfyUI cannot save a file and a folder of one name: HTTP 500
            if name == image.subfolder or (folder and folder == image.name):
                raise InvalidImages(
                    f"{where}.name: {name!r} and metadata.images[{other}].name {image.name!r} make "
                    f"{folder or name!r} both a file and a folder"
                )
        text = entry["image"]
        if not isinstance(text, str):
            raise InvalidImages(f"{where}.image: must be a base64 string, got {type(text).__name__}")
        base64_chars += len(text)
        if base64_chars > MAX_METADATA_BYTES:  # the queue manager refuses such a job; another one is not decoded
            raise InvalidImages(
                f"{where}.image: the images are larger than {MAX_METADATA_BYTES} bytes of base64 "
                "in all, the queue manager's cap on a job's metadata"
            )
        images.append(InputImage(name, _decoded(text, f"{where}.image")))
    return tuple(images)


def _checked_name(name: object, where: str) -> str:
    if not isinstance(name, str):
        raise InvalidImages(f"{where}: must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidImages(f"{where}: empty; {NAME_RULE}")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidImages(f"{where}: {len(name)} characters, at most {MAX_NAME_CHARS}")
    parts = name.split("/")
    if len(parts) > 2 or ".." in name or not all(SAFE_PART.fullmatch(part) for part in parts):
        raise InvalidImages(f"{where}: {name!r} is not a safe file name: {NAME_RULE}")
    return name


def _decoded(text: str, where: str) -> bytes:
    """Standard base64, with or without a data:image/...;base64, prefix; line breaks (base64 -w 76) ignored."""
    if text.startswith("data:"):
        prefix = DATA_URI.match(text)
        if prefix is None:
            raise InvalidImages(
                f"{where}: a data URI must start data:image/<type>;base64, (the image's own bytes, base64-encoded)"
            )
        text = text[prefix.end() :]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImages(f"{where}: not base64 (standard alphabet A-Z a-z 0-9 + /, '=' padding)") from None
    if not data:
        raise InvalidImages(f"{where}: empty: no image bytes")
    return data
