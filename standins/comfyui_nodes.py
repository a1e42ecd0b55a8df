"""The simulated ComfyUI 0.8.0 node layer: which nodes exist, how `POST /prompt` validates a
prompt against them, and what each node computes and writes.

Validation follows ComfyUI's `execution.validate_prompt` / `validate_inputs` step for step, so
the 400 bodies match the recorded ones byte for byte. Images are tiny stand-ins (a size and a
solid colour) that flow between nodes and end up as small but valid PNG files.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random
import string
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MAX_RESOLUTION = 16384
PNG_MAX_SIDE = 256  # files stay small whatever resolution the workflow asks for

# Frames copied from the recorded transcripts, so tracebacks look like the real server's.
EXECUTE_FRAMES = [
    '  File "/opt/ComfyUI/execution.py", line 518, in execute\n    output_data, output_ui, has_subgraph, '
    "has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, "
    "execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n"
    "                                                              " + "^" * 151 + "\n",
    '  File "/opt/ComfyUI/execution.py", line 329, in get_output_data\n    return_values = await '
    "_async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, "
    "execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n"
    "                    " + "^" * 197 + "\n",
    '  File "/opt/ComfyUI/execution.py", line 303, in _async_map_node_over_list\n'
    "    await process_inputs(input_dict, i)\n",
    '  File "/opt/ComfyUI/execution.py", line 291, in process_inputs\n    result = f(**inputs)\n'
    "             ^^^^^^^^^^^\n",
]
BROKEN_CHECKPOINT_FRAMES = [
    '  File "/opt/ComfyUI/nodes.py", line 585, in load_checkpoint\n    out = comfy.sd.load_checkpoint_guess_config('
    "ckpt_path, output_vae=True, output_clip=True, "
    'embedding_directory=folder_paths.get_folder_paths("embeddings"))\n'
    "          " + "^" * 148 + "\n",
    '  File "/opt/ComfyUI/comfy/sd.py", line 1348, in load_checkpoint_guess_config\n    sd, metadata = '
    "comfy.utils.load_torch_file(ckpt_path, return_metadata=True)\n                   " + "^" * 60 + "\n",
    '  File "/opt/ComfyUI/comfy/utils.py", line 80, in load_torch_file\n    raise e\n',
    '  File "/opt/ComfyUI/comfy/utils.py", line 64, in load_torch_file\n    with safetensors.safe_open(ckpt, '
    'framework="pt", device=device.type) as f:\n         ' + "^" * 63 + "\n",
]


def source_frame(file: str, line: int, function: str, code: str, expression: str = "", tildes: int = 0) -> str:
    """One `traceback.format_tb` entry as the recorded server's Python 3.11 writes it: the source line, then marks
    under the expression that raised (`~` under a subscript's value, `^` under the rest), unless that is the line."""
    text = f'  File "/opt/ComfyUI/{file}", line {line}, in {function}\n    {code}\n'
    if expression:
        text += " " * (4 + code.index(expression)) + "~" * tildes + "^" * (len(expression) - tildes) + "\n"
    return text


# Where execution.validate_prompt / validate_inputs raise, as lines of ComfyUI 0.8.0's source.
VALIDATE_PROMPT_FRAME = source_frame(
    "execution.py", 1043, "validate_prompt", "m = await validate_inputs(prompt_id, prompt, o, validated)",
    "await validate_inputs(prompt_id, prompt, o, validated)",
)
INNER_VALIDATION_FRAME = source_frame(
    "execution.py", 838, "validate_inputs", "r = await validate_inputs(prompt_id, prompt, o_id, validated)",
    "await validate_inputs(prompt_id, prompt, o_id, validated)",
)
NODE_INPUTS_FRAME = source_frame(
    "execution.py", 755, "validate_inputs", "inputs = prompt[unique_id]['inputs']", "prompt[unique_id]['inputs']", 17
)
LINKED_NODE_FRAME = source_frame(
    "execution.py", 818, "validate_inputs", "o_class_type = prompt[o_id]['class_type']", "prompt[o_id]", 6
)
LINKED_SLOT_FRAME = source_frame("execution.py", 820, "validate_inputs", "received_type = r[val[1]]", "r[val[1]]", 1)
_MAP_CALL = (
    "await _async_map_node_over_list(prompt_id, unique_id, obj_class, input_filtered, validate_function_name, "
    "v3_data=v3_data)"
)
CUSTOM_VALIDATION_FRAME = source_frame("execution.py", 965, "validate_inputs", f"ret = {_MAP_CALL}", _MAP_CALL)
MAP_NO_INPUTS_FRAME = source_frame("execution.py", 299, "_async_map_node_over_list", "await process_inputs({})")
MAP_INPUTS_FRAME = source_frame("execution.py", 303, "_async_map_node_over_list", "await process_inputs(input_dict, i)")
PROCESS_INPUTS_FRAME = source_frame("execution.py", 291, "process_inputs", "result = f(**inputs)", "f(**inputs)")
# Inside LoadImage.VALIDATE_INPUTS down to folder_paths.annotated_filepath's `name.endswith`, where a non-string raises.
LOAD_IMAGE_VALIDATE_FRAMES = (
    source_frame("nodes.py", 1719, "VALIDATE_INPUTS", "if not folder_paths.exists_annotated_filepath(image):",
           "folder_paths.exists_annotated_filepath(image)"),
    source_frame("folder_paths.py", 272, "exists_annotated_filepath", "name, base_dir = annotated_filepath(name)",
           "annotated_filepath(name)"),
    source_frame("folder_paths.py", 244, "annotated_filepath", 'if name.endswith("[output]"):', "name.endswith"),
)  # fmt: skip


SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "ddim", "uni_pc",
    "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]  # fmt: skip


class NodeError(Exception):
    """A node raised while executing; carries what ComfyUI reports in `execution_error`."""

    def __init__(self, message: str, exception_type: str, traceback: list[str]) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.traceback = traceback


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    batch_size: int


@dataclass(frozen=True)
class Opaque:
    """A model, clip, vae or conditioning: only its type matters to the simulator."""

    kind: str


@dataclass
class NodeEnv:
    """What a node may touch on disk, running or validating."""

    output_dir: Path
    temp_dir: Path
    input_dir: Path


@dataclass(frozen=True)
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class NodeDef:
    name: str
    display_name: str
    category: str
    required: dict[str, tuple]
    return_types: tuple[str, ...]
    run: Callable[[dict[str, Any], NodeEnv], NodeResult]
    return_names: tuple[str, ...] | None = None
    hidden: dict[str, str] = field(default_factory=dict)
    output_node: bool = False
    python_module: str = "nodes"
    description: str = ""
    steps_input: str | None = None  # input holding a step count: the node reports progress per step
    # ComfyUI validates inputs in `set()` order, which is per-process; this pins the recorded order.
    validation_order: tuple[str, ...] | None = None
    # INPUT_TYPES read anew at each question (LoadImage lists the input folder); `required` otherwise.
    input_types: Callable[[NodeEnv], dict[str, tuple]] | None = None
    # VALIDATE_INPUTS(env, **the inputs it names): True, False or a message. Its inputs skip the range and list
    # checks, as in ComfyUI.
    validate: Callable[..., Any] | None = None
    validate_inputs: tuple[str, ...] = ()
    # The traceback frames inside VALIDATE_INPUTS down to where it raises (ComfyUI's source lines).
    validate_frames: tuple[str, ...] = ()
    # IS_CHANGED: a value that changes when the node's output would (LoadImage: its file's hash); part of the
    # cache key.
    is_changed: Callable[[dict[str, Any], NodeEnv], Any] | None = None

    def inputs_now(self, env: NodeEnv) -> dict[str, tuple]:
        return self.input_types(env) if self.input_types else self.required

    def object_info(self, env: NodeEnv) -> dict[str, Any]:
        required = self.inputs_now(env)
        inputs: dict[str, Any] = {"required": {k: list(v) for k, v in required.items()}}
        order: dict[str, list[str]] = {"required": list(required)}
        if self.hidden:
            inputs["hidden"] = dict(self.hidden)
            order["hidden"] = list(self.hidden)
        return {
            "input": inputs,
            "input_order": order,
            "output": list(self.return_types),
            "output_is_list": [False] * len(self.return_types),
            "output_name": list(self.return_names or self.return_types),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }


# --- what the nodes compute ------------------------------------------------------------------


def _empty_image(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    color = inputs["color"]
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return NodeResult(([Image(inputs["width"], inputs["height"], rgb)] * inputs["batch_size"],))


def _invert(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    return NodeResult(([replace(i, rgb=tuple(255 - c for c in i.rgb)) for i in inputs["image"]],))


def _blur(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    return NodeResult((list(inputs["image"]),))


def _load_checkpoint(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    if inputs["ckpt_name"].startswith("broken"):
        raise NodeError(
            "Error while deserializing header: header too large",
            "safetensors._safetensors_rust.SafetensorError",
            EXECUTE_FRAMES + BROKEN_CHECKPOINT_FRAMES,
        )
    return NodeResult((Opaque("MODEL"), Opaque("CLIP"), Opaque("VAE")))


def _empty_latent(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    return NodeResult((Latent(inputs["width"], inputs["height"], inputs["batch_size"]),))


def _encode_text(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    return NodeResult((Opaque("CONDITIONING"),))


def _sample(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    return NodeResult((inputs["latent_image"],))


def _vae_decode(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    latent: Latent = inputs["samples"]
    return NodeResult(([Image(latent.width, latent.height, (128, 128, 128))] * latent.batch_size,))


def _concatenate(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    return NodeResult((inputs["delimiter"].join((inputs["string_a"], inputs["string_b"])),))


def _preview_any(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    """PreviewAny.main: the value as text in the node's `ui` (so in the history and the `executed` event)."""
    source = inputs["source"]
    if isinstance(source, str):
        value = source
    elif isinstance(source, (int, float, bool)):
        value = str(source)
    elif source is not None:
        try:
            value = json.dumps(source, indent=4)
        except Exception:
            value = str(source)
    else:
        value = "None"
    return NodeResult((), {"text": [value]})


def annotated_filepath(name: str, env: NodeEnv) -> str:
    """folder_paths.get_annotated_filepath: `name`, or `name [output]`, `[input]`, `[temp]`, in the input folder or
    the one named."""
    for suffix, folder in ((" [output]", env.output_dir), (" [input]", env.input_dir), (" [temp]", env.temp_dir)):
        if name.endswith(suffix[1:]):
            return os.path.join(folder, name[: -len(suffix)])
    return os.path.join(env.input_dir, name)


def _load_image(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    path = annotated_filepath(inputs["image"], env)
    with open(path, "rb") as file:  # PIL's open: FileNotFoundError, IsADirectoryError as they come
        size = image_size(file.read())
    if size is None:
        raise NodeError(f"cannot identify image file {path!r}", "PIL.UnidentifiedImageError", EXECUTE_FRAMES)
    return NodeResult(([Image(*size, (128, 128, 128))], Opaque("MASK")))


def _validate_load_image(env: NodeEnv, image: Any) -> bool | str:
    """LoadImage.VALIDATE_INPUTS: the file must exist (any file: ComfyUI opens it only when the node runs)."""
    if not os.path.exists(annotated_filepath(image, env)):
        return f"Invalid image file: {image}"
    return True


_validate_load_image.__qualname__ = "LoadImage.VALIDATE_INPUTS"  # as ComfyUI's TypeError names it


def _load_image_changed(inputs: dict[str, Any], env: NodeEnv) -> str | None:
    try:
        with open(annotated_filepath(inputs["image"], env), "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except (OSError, TypeError, AttributeError):
        return None


def _load_image_inputs(env: NodeEnv) -> dict[str, tuple]:
    """LoadImage.INPUT_TYPES: the input folder's files (not its subfolders) whose type is an image, sorted."""
    folder = env.input_dir
    files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    images = [f for f in files if (mimetypes.guess_type(f, strict=False)[0] or "").split("/")[0] == "image"]
    return {"image": (sorted(images), {"image_upload": True})}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or a JPEG, which the stand-in reads; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _save_images(images: Sequence[Image], folder: Path, filename_prefix: str, kind: str) -> dict[str, Any]:
    full_folder, filename, counter, subfolder = save_image_path(filename_prefix, folder)
    results = []
    for batch_number, image in enumerate(images):
        file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        (full_folder / file).write_bytes(png_bytes(image))
        results.append({"filename": file, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"images": results}


def _save_image(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    return NodeResult((), _save_images(inputs["images"], env.output_dir, inputs["filename_prefix"], "output"))


def _preview_image(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
    prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    return NodeResult((), _save_images(inputs["images"], env.temp_dir, prefix, "temp"))


def save_image_path(filename_prefix: str, output_dir: Path) -> tuple[Path, str, int, str]:
    """ComfyUI's `folder_paths.get_save_image_path`: next free counter for `prefix_NNNNN_`."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_folder = (output_dir / subfolder).resolve()
    if os.path.commonpath((output_dir, full_folder)) != str(output_dir):
        raise NodeError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {full_folder}\n         output_dir: {output_dir}",
            "Exception",
            EXECUTE_FRAMES,
        )
    full_folder.mkdir(parents=True, exist_ok=True)
    counters = [0]
    for existing in os.listdir(full_folder):
        head, _, rest = existing.partition(filename + "_")
        digits = rest.split("_")[0]
        if head == "" and rest and digits.isdigit():
            counters.append(int(digits))
    return full_folder, filename, max(counters) + 1, subfolder


def png_bytes(image: Image) -> bytes:
    """A solid-colour RGB PNG, its sides capped so files stay small."""
    width, height = min(image.width, PNG_MAX_SIDE), min(image.height, PNG_MAX_SIDE)
    row = b"\x00" + bytes(image.rgb) * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height, 1))
        + chunk(b"IEND", b"")
    )


# --- the catalogue ---------------------------------------------------------------------------


def _int(default: int, lo: int, hi: int, step: int | None = 1, **extra: Any) -> tuple:
    options = {"default": default, "min": lo, "max": hi}
    if step is not None:
        options["step"] = step
    return ("INT", {**options, **extra})


def build_catalogue(checkpoints: Iterable[str]) -> dict[str, NodeDef]:
    """The nodes a CPU-only ComfyUI 0.8.0 offers that the test workflows use."""
    image_in = ("IMAGE", {"tooltip": "The images to save."})
    size = _int(512, 16, MAX_RESOLUTION, 8, tooltip="The width of the latent images in pixels.")
    nodes = [
        NodeDef(
            "EmptyImage", "EmptyImage", "image",
            {
                "width": _int(512, 1, MAX_RESOLUTION),
                "height": _int(512, 1, MAX_RESOLUTION),
                "batch_size": _int(1, 1, 4096, step=None),
                "color": _int(0, 0, 0xFFFFFF, display="color"),
            },
            ("IMAGE",), _empty_image,
            validation_order=("batch_size", "height", "width", "color"),
        ),
        NodeDef("ImageInvert", "Invert Image", "image", {"image": ("IMAGE",)}, ("IMAGE",), _invert),
        NodeDef(
            "ImageBlur", "Image Blur", "image/postprocessing",
            {
                "image": ("IMAGE",),
                "blur_radius": _int(1, 1, 31),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
            },
            ("IMAGE",), _blur, python_module="comfy_extras.nodes_post_processing",
        ),
        NodeDef(
            "LoadImage", "Load Image", "image", {"image": ([], {"image_upload": True})}, ("IMAGE", "MASK"),
            _load_image, input_types=_load_image_inputs, validate=_validate_load_image, validate_inputs=("image",),
            validate_frames=LOAD_IMAGE_VALIDATE_FRAMES, is_changed=_load_image_changed,
        ),
        NodeDef(
            "SaveImage", "Save Image", "image",
            {
                "images": image_in,
                "filename_prefix": ("STRING", {
                    "default": "ComfyUI",
                    "tooltip": "The prefix for the file to save. This may include formatting information such as "
                    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
                }),
            },
            (), _save_image, hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "PreviewImage", "Preview Image", "image", {"images": ("IMAGE",)}, (), _preview_image,
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "CheckpointLoaderSimple", "Load Checkpoint", "loaders",
            {"ckpt_name": (list(checkpoints), {"tooltip": "The name of the checkpoint (model) to load."})},
            ("MODEL", "CLIP", "VAE"), _load_checkpoint,
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        ),
        NodeDef(
            "EmptyLatentImage", "Empty Latent Image", "latent",
            {
                "width": size,
                "height": (size[0], {**size[1], "tooltip": "The height of the latent images in pixels."}),
                "batch_size": _int(1, 1, 4096, step=None, tooltip="The number of latent images in the batch."),
            },
            ("LATENT",), _empty_latent,
            description="Create a new batch of empty latent images to be denoised via sampling.",
        ),
        NodeDef(
            "CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning",
            {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                    "tooltip": "The text to be encoded."}),
                "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
            },
            ("CONDITIONING",), _encode_text,
        ),
        NodeDef(
            "KSampler", "KSampler", "sampling",
            {
                "model": ("MODEL",),
                "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, step=None, control_after_generate=True),
                "steps": _int(20, 1, 10000, step=None),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (SAMPLERS,),
                "scheduler": (SCHEDULERS,),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            },
            ("LATENT",), _sample, steps_input="steps",
        ),
        NodeDef(
            "VAEDecode", "VAE Decode", "latent", {"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",), _vae_decode,
        ),
        NodeDef(
            "StringConcatenate", "Concatenate", "utils/string",
            {
                "string_a": ("STRING", {"multiline": True}),
                "string_b": ("STRING", {"multiline": True}),
                "delimiter": ("STRING", {"multiline": False, "default": ""}),
            },
            ("STRING",), _concatenate, python_module="comfy_extras.nodes_string",
        ),
        NodeDef(
            "PreviewAny", "Preview as Text", "utils", {"source": ("*", {})}, (), _preview_any,
            output_node=True, python_module="comfy_extras.nodes_preview_any",
        ),
    ]  # fmt: skip
    return {node.name: node for node in nodes}


# --- validation (execution.validate_prompt) --------------------------------------------------


@dataclass(frozen=True)
class Validation:
    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def _error(kind: str, message: str, details: str = "", extra_info: dict | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _types_match(received: str, wanted: Any) -> bool:
    wanted = "COMBO" if isinstance(wanted, list) else wanted
    if "*" in (received, wanted) or received == wanted:
        return True
    return bool(set(received.split(",")) & set(wanted.split(",")))


def _convert(value: Any, input_type: Any) -> Any:
    converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
    return converters[input_type](value) if isinstance(input_type, str) and input_type in converters else value


class _Validator:
    def __init__(self, prompt: dict[str, Any], catalogue: dict[str, NodeDef], env: NodeEnv) -> None:
        self.prompt = prompt
        self.catalogue = catalogue
        self.env = env
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        with _raising_at(NODE_INPUTS_FRAME):
            inputs = self.prompt[node_id]["inputs"]
        node_def = self.catalogue[self.prompt[node_id]["class_type"]]
        errors: list[dict[str, Any]] = []
        valid = True
        required = node_def.inputs_now(self.env)
        for name in node_def.validation_order or tuple(required):
            input_type, *rest = required[name]
            info = rest[0] if rest else {}
            if name not in inputs:
                errors.append(_error("required_input_missing", "Required input is missing", name, {"input_name": name}))
                continue
            value = inputs[name]
            config = [input_type, info]
            if isinstance(value, list):
                valid = self._link(name, value, input_type, config, errors) and valid
                continue
            if isinstance(value, dict) and "__value__" in value:  # a list widget value, wrapped so it is no link
                value = inputs[name] = value["__value__"]
            try:
                value = inputs[name] = _convert(value, input_type)
            except Exception as ex:
                errors.append(
                    _error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {input_type} value",
                        f"{name}, {value}, {ex}",
                        {
                            "input_name": name,
                            "input_config": config,
                            "received_value": value,
                            "exception_message": str(ex),
                        },
                    )
                )
                continue
            error = None if name in node_def.validate_inputs else _range_or_choice_error(
                name, value, input_type, info, config
            )
            if error:
                errors.append(error)
        if node_def.validate is not None:
            errors += _custom_validation(node_def, inputs, self.env)
        result = (not errors and valid, errors)
        self.validated[node_id] = result
        return result

    def _link(self, name: str, link: list, input_type: Any, config: list, errors: list) -> bool:
        if len(link) != 2:
            errors.append(
                _error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    name,
                    {"input_name": name, "input_config": config, "received_value": link},
                )
            )
            return True
        source_id, slot = link
        with _raising_at(LINKED_NODE_FRAME):
            source_class = self.prompt[source_id]["class_type"]
        with _raising_at(LINKED_SLOT_FRAME):
            received_type = self.catalogue[source_class].return_types[slot]
        if not _types_match(received_type, input_type):
            errors.append(
                _error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                    {"input_name": name, "input_config": config, "received_type": received_type, "linked_node": link},
                )
            )
            return True
        try:
            return self.node(source_id)[0]
        except Exception as ex:
            self.validated[source_id] = (
                False,
                [
                    _error(
                        "exception_during_inner_validation",
                        "Exception when validating inner node",
                        str(ex),
                        {
                            "input_name": name,
                            "input_config": config,
                            "exception_message": str(ex),
                            "exception_type": type(ex).__name__,
                            "traceback": [INNER_VALIDATION_FRAME, *_frames_of(ex)],
                            "linked_node": link,
                        },
                    )
                ],
            )
            return False


def _custom_validation(node_def: NodeDef, inputs: dict[str, Any], env: NodeEnv) -> list[dict[str, Any]]:
    """VALIDATE_INPUTS with the inputs it names that the prompt gives, a linked one as None (a missing one raises,
    as in ComfyUI)."""
    named = [name for name in node_def.validate_inputs if name in inputs]
    given = {name: None if _is_link(inputs[name]) else inputs[name] for name in named}
    try:
        verdict = node_def.validate(env, **given)
    except Exception as ex:
        raised_inside = ex.__traceback__ is not None and ex.__traceback__.tb_next is not None  # not at the call
        map_frame = MAP_INPUTS_FRAME if given else MAP_NO_INPUTS_FRAME
        inside = node_def.validate_frames if raised_inside else ()
        _tag(ex, (CUSTOM_VALIDATION_FRAME, map_frame, PROCESS_INPUTS_FRAME, *inside))
        raise
    if verdict is True:
        return []
    return [
        _error("custom_validation_failed", "Custom validation failed for node",
               name + ("" if verdict is False else f" - {verdict}"), {"input_name": name})
        for name in given
    ]  # fmt: skip


def _is_link(value: Any) -> bool:
    """comfy_execution.graph_utils.is_link."""
    if not isinstance(value, list) or len(value) != 2:
        return False
    return isinstance(value[0], str) and isinstance(value[1], (int, float))


@contextmanager
def _raising_at(frame: str) -> Iterator[None]:
    """An exception from the block is tagged with the ComfyUI source line its traceback would end on."""
    try:
        yield
    except Exception as ex:
        _tag(ex, (frame,))
        raise


def _tag(ex: Exception, frames: tuple[str, ...]) -> None:
    ex.comfyui_frames = frames  # type: ignore[attr-defined]


def _frames_of(ex: Exception) -> tuple[str, ...]:
    """The frames below validate_inputs' caller that ComfyUI's traceback shows for `ex`."""
    return getattr(ex, "comfyui_frames", ())


def _range_or_choice_error(name: str, value: Any, input_type: Any, info: dict, config: list) -> dict | None:
    extra = {"input_name": name, "input_config": config, "received_value": value}
    if "min" in info and value < info["min"]:
        return _error("value_smaller_than_min", f"Value {value} smaller than min of {info['min']}", name, extra)
    if "max" in info and value > info["max"]:
        return _error("value_bigger_than_max", f"Value {value} bigger than max of {info['max']}", name, extra)
    if isinstance(input_type, list) and value not in input_type:
        # ComfyUI elides long choice lists (every scanned model file) from the error.
        listing = f"(list of length {len(input_type)})" if len(input_type) > 20 else str(input_type)
        extra["input_config"] = None if len(input_type) > 20 else config
        return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}", extra)
    return None


def validate_prompt(
    prompt: dict[str, Any], catalogue: dict[str, NodeDef], env: NodeEnv, partial_execution_list: Any = None
) -> Validation:
    """ComfyUI's `execution.validate_prompt`; converts widget values in place, as ComfyUI does. With a
    `partial_execution_list` (any JSON: it is searched with `in`) only the output nodes it holds are run."""
    outputs = []
    for node_id in prompt:
        if "class_type" not in prompt[node_id]:
            return Validation(
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                [],
                {},
            )
        class_type = prompt[node_id]["class_type"]
        if class_type not in catalogue:
            return Validation(
                False,
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                ),
                [],
                {},
            )
        if catalogue[class_type].output_node and (partial_execution_list is None or node_id in partial_execution_list):
            outputs.append(node_id)
    if not outputs:
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {})

    validator = _Validator(prompt, catalogue, env)
    good_outputs: list[str] = []
    failures: list[dict[str, Any]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        try:
            valid, reasons = validator.node(output)
        except Exception as ex:
            valid, reasons = (
                False,
                [
                    _error(
                        "exception_during_validation",
                        "Exception when validating node",
                        str(ex),
                        {"exception_type": type(ex).__name__, "traceback": [VALIDATE_PROMPT_FRAME, *_frames_of(ex)]},
                    )
                ],
            )
            validator.validated[output] = (False, reasons)
        if valid:
            good_outputs.append(output)
            continue
        failures += reasons
        for node_id, (node_valid, node_reasons) in validator.validated.items():
            if not node_valid and node_reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(output)
    if not good_outputs:
        details = "\n".join(f"{e['message']}: {e['details']}" for e in failures)
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return Validation(False, error, [], node_errors)
    return Validation(True, None, good_outputs, node_errors)
