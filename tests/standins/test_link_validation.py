"""How POST /prompt judges links and wrapped values, as ComfyUI 0.8.0's execution.validate_inputs does (no recording
for these: read from its source; the tracebacks are what its Python 3.11 writes for those source lines, in the
format the recordings pin: tests/standins/test_validation.py replays bad_link's byte for byte)."""

from __future__ import annotations

from typing import Any

import aiohttp

from standins.comfyui import ComfyUISimulator
from standins.comfyui_nodes import source_frame as frame

from .conftest import collect_until_done, submit

VALIDATE_PROMPT = frame(
    "execution.py", 1043, "validate_prompt", "m = await validate_inputs(prompt_id, prompt, o, validated)",
    "await validate_inputs(prompt_id, prompt, o, validated)",
)
INNER = frame(
    "execution.py", 838, "validate_inputs", "r = await validate_inputs(prompt_id, prompt, o_id, validated)",
    "await validate_inputs(prompt_id, prompt, o_id, validated)",
)
NODE_INPUTS = frame(
    "execution.py", 755, "validate_inputs", "inputs = prompt[unique_id]['inputs']", "prompt[unique_id]['inputs']", 17
)
LINKED_NODE = frame(
    "execution.py", 818, "validate_inputs", "o_class_type = prompt[o_id]['class_type']", "prompt[o_id]", 6
)
LINKED_SLOT = frame("execution.py", 820, "validate_inputs", "received_type = r[val[1]]", "r[val[1]]", 1)
CALL = "await _async_map_node_over_list(prompt_id, unique_id, obj_class, input_filtered, validate_function_name, " \
    "v3_data=v3_data)"  # fmt: skip
CUSTOM = [
    frame("execution.py", 965, "validate_inputs", f"ret = {CALL}", CALL),
    frame("execution.py", 303, "_async_map_node_over_list", "await process_inputs(input_dict, i)"),
    frame("execution.py", 291, "process_inputs", "result = f(**inputs)", "f(**inputs)"),
]
LOAD_IMAGE_INSIDE = [
    frame("nodes.py", 1719, "VALIDATE_INPUTS", "if not folder_paths.exists_annotated_filepath(image):",
          "folder_paths.exists_annotated_filepath(image)"),
    frame("folder_paths.py", 272, "exists_annotated_filepath", "name, base_dir = annotated_filepath(name)",
          "annotated_filepath(name)"),
    frame("folder_paths.py", 244, "annotated_filepath", 'if name.endswith("[output]"):', "name.endswith"),
]  # fmt: skip
EMPTY_IMAGE = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
SAVE_IMAGE_CONFIG = ["IMAGE", {"tooltip": "The images to save."}]


def save(images: list, **nodes: dict) -> dict[str, Any]:
    return {**nodes, "9": {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": "x"}}}


async def rejected(http: aiohttp.ClientSession, sim: ComfyUISimulator, prompt: dict) -> dict[str, Any]:
    async with http.post(f"{sim.url}/prompt", json={"prompt": prompt}) as response:
        assert response.status == 400
        return await response.json()


def failed(details: str, node_errors: dict) -> dict[str, Any]:
    error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
             "details": details, "extra_info": {}}  # fmt: skip
    return {"error": error, "node_errors": node_errors}


def inner_error(node_id: str, class_type: str, ex: tuple[str, str], traceback: list[str]) -> dict[str, Any]:
    """The exception raised validating node_id, reported on it by the SaveImage (9) that links to it."""
    exception_type, message = ex
    extra = {"input_name": "images", "input_config": SAVE_IMAGE_CONFIG, "exception_message": message,
             "exception_type": exception_type, "traceback": [INNER, *traceback],
             "linked_node": [node_id, 0]}  # fmt: skip
    error = {"type": "exception_during_inner_validation", "message": "Exception when validating inner node",
             "details": message, "extra_info": extra}  # fmt: skip
    return {node_id: {"errors": [error], "dependent_outputs": ["9"], "class_type": class_type}}


def output_error(ex: tuple[str, str], traceback: list[str]) -> dict[str, Any]:
    exception_type, message = ex
    error = {"type": "exception_during_validation", "message": "Exception when validating node", "details": message,
             "extra_info": {"exception_type": exception_type, "traceback": [VALIDATE_PROMPT, *traceback]}}  # fmt: skip
    return failed(f"Exception when validating node: {message}",
                  {"9": {"errors": [error], "dependent_outputs": ["9"], "class_type": "SaveImage"}})  # fmt: skip


async def test_a_link_past_the_nodes_outputs_fails_on_the_output_lookup(sim, http) -> None:
    body = await rejected(http, sim, save(["1", 1], **{"1": EMPTY_IMAGE}))
    assert body == output_error(("IndexError", "tuple index out of range"), [LINKED_SLOT])


async def test_a_link_whose_slot_is_no_number_fails_on_the_output_lookup(sim, http) -> None:
    body = await rejected(http, sim, save(["1", "0"], **{"1": EMPTY_IMAGE}))
    assert body == output_error(("TypeError", "tuple indices must be integers or slices, not str"), [LINKED_SLOT])


async def test_an_output_node_without_inputs_fails_on_its_inputs_lookup(sim, http) -> None:
    body = await rejected(http, sim, {"9": {"class_type": "SaveImage"}})
    assert body == output_error(("KeyError", "'inputs'"), [NODE_INPUTS])


async def test_a_missing_node_linked_from_an_inner_node_is_reported_on_that_node(sim, http) -> None:
    invert = {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}}
    body = await rejected(http, sim, save(["2", 0], **{"2": invert}))
    assert body == failed("", inner_error("2", "ImageInvert", ("KeyError", "'7'"), [LINKED_NODE]))


async def test_a_link_past_the_outputs_of_an_inner_nodes_input_is_reported_on_that_node(sim, http) -> None:
    invert = {"class_type": "ImageInvert", "inputs": {"image": ["1", 2]}}
    body = await rejected(http, sim, save(["2", 0], **{"1": EMPTY_IMAGE, "2": invert}))
    ex = ("IndexError", "tuple index out of range")
    assert body == failed("", inner_error("2", "ImageInvert", ex, [LINKED_SLOT]))


async def test_load_image_linked_gets_none_in_validate_inputs_and_raises(sim, http) -> None:
    # The link's return_type_mismatch is lost: VALIDATE_INPUTS still runs (image=None) and raises.
    load = {"class_type": "LoadImage", "inputs": {"image": ["1", 0]}}
    body = await rejected(http, sim, save(["2", 0], **{"1": EMPTY_IMAGE, "2": load}))
    ex = ("AttributeError", "'NoneType' object has no attribute 'endswith'")
    assert body == failed("", inner_error("2", "LoadImage", ex, CUSTOM + LOAD_IMAGE_INSIDE))


async def test_load_image_of_a_number_raises_inside_validate_inputs(sim, http) -> None:
    load = {"class_type": "LoadImage", "inputs": {"image": 5}}
    body = await rejected(http, sim, save(["2", 0], **{"2": load}))
    ex = ("AttributeError", "'int' object has no attribute 'endswith'")
    assert body == failed("", inner_error("2", "LoadImage", ex, CUSTOM + LOAD_IMAGE_INSIDE))


async def test_load_image_without_its_input_fails_calling_validate_inputs(sim, http) -> None:
    load = {"class_type": "LoadImage", "inputs": {}}
    body = await rejected(http, sim, save(["2", 0], **{"2": load}))
    no_inputs = frame("execution.py", 299, "_async_map_node_over_list", "await process_inputs({})")
    ex = ("TypeError", "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'")
    assert body == failed("", inner_error("2", "LoadImage", ex, [CUSTOM[0], no_inputs, CUSTOM[2]]))


async def test_a_wrapped_value_is_unwrapped_before_conversion(sim, http) -> None:
    image = {**EMPTY_IMAGE, "inputs": {**EMPTY_IMAGE["inputs"], "width": {"__value__": [8]}}}
    body = await rejected(http, sim, save(["1", 0], **{"1": image}))
    message = "int() argument must be a string, a bytes-like object or a real number, not 'list'"
    error = {"type": "invalid_input_type", "message": "Failed to convert an input value to a INT value",
             "details": f"width, [8], {message}",
             "extra_info": {"input_name": "width", "input_config": ["INT", {"default": 512, "min": 1, "max": 16384,
                                                                            "step": 1}],
                            "received_value": [8], "exception_message": message}}  # fmt: skip
    assert body == failed("", {"1": {"errors": [error], "dependent_outputs": ["9"], "class_type": "EmptyImage"}})


async def test_a_wrapped_list_reaches_the_node_as_the_list(sim, http) -> None:
    prompt = {
        "1": {"class_type": "StringConcatenate",
              "inputs": {"string_a": {"__value__": "a"}, "string_b": {"__value__": ["b"]}, "delimiter": "-"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": {"__value__": [1, 2]}}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }  # fmt: skip
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        accepted = await submit(http, sim.url, prompt, "c")
        await collect_until_done(ws, accepted["prompt_id"])
    async with http.get(f"{sim.url}/history/{accepted['prompt_id']}") as response:
        entry = (await response.json())[accepted["prompt_id"]]
    assert entry["outputs"] == {"2": {"text": ["[\n    1,\n    2\n]"]}, "3": {"text": ["a-['b']"]}}
    assert entry["prompt"][2]["1"]["inputs"]["string_a"] == "a"  # the queued prompt holds the unwrapped values
    assert entry["prompt"][2]["2"]["inputs"]["source"] == [1, 2]


async def test_a_bad_link_and_a_mismatch_into_a_combo_are_reported_on_their_nodes(sim, http) -> None:
    """Matched ComfyUI before the link checks were completed; kept so they stay so."""
    prompt = save(["5", 0], **{
        "1": EMPTY_IMAGE,
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ["1", 0]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0, 0], "vae": ["2", 2]}},
    })
    body = await rejected(http, sim, prompt)
    bad = {"type": "bad_linked_input", "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
           "details": "samples",
           "extra_info": {"input_name": "samples", "input_config": ["LATENT", {}], "received_value": ["6", 0, 0]}}
    combo = [["broken.safetensors"], {"tooltip": "The name of the checkpoint (model) to load."}]
    mismatch = {"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
                "details": "ckpt_name, received_type(IMAGE) mismatch input_type(['broken.safetensors'])",
                "extra_info": {"input_name": "ckpt_name", "input_config": combo, "received_type": "IMAGE",
                               "linked_node": ["1", 0]}}
    assert body == failed("", {
        "2": {"errors": [mismatch], "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"},
        "5": {"errors": [bad], "dependent_outputs": ["9"], "class_type": "VAEDecode"},
    })
