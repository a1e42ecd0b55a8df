"""A workflow may load files by name from ComfyUI's folders, never from outside them: a name that leaves its
folder is refused before anything reaches ComfyUI (worker/workflow_paths.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from standins.comfyui import ComfyUISimulator
from standins.comfyui_nodes import Image, image_size, png_bytes

# Another user's result on the shared outputs volume: what a hostile LoadImage is after.
BOBS = "outputs/bob/j1/ComfyUI_00001_.png"


@pytest.fixture
async def comfy(tmp_path: Path):
    """The stand-in with a checkpoint that loads, so a text-to-image workflow runs to the end."""
    sim = ComfyUISimulator(
        tmp_path / "comfy-output", tmp_path / "comfy-temp", checkpoints=("sd_xl_base_1.0.safetensors",)
    )
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture(autouse=True)
def bobs_result(tmp_path: Path) -> Path:
    path = tmp_path / BOBS
    path.parent.mkdir(parents=True)
    path.write_bytes(png_bytes(Image(11, 13, (1, 2, 3))))
    return path


def load_and_save(name: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}},
    }


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        (f"../{BOBS}", "input"),  # input/../outputs/bob/…: the stand-in's input folder is beside outputs/
        (f"alice/../../{BOBS}", "input"),
        (f"../{BOBS} [output]", "output"),  # comfy-output/../outputs/bob/…
        (f"x/..[output]/../../{BOBS}", "input"),  # an annotation in the middle is no annotation
        (f"..\\{BOBS}".replace("/", "\\"), "input"),
    ],
)
async def test_a_name_with_a_way_up_is_refused_before_comfyui(qm, comfy, make_worker, name, folder):
    job = qm.store.submit("alice", load_and_save(name))
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"] == (
        f"Invalid job: job 'workflow' node '1' (LoadImage) input 'image': {name!r} leaves ComfyUI's {folder} folder"
    )
    assert comfy.prompts_received == [], "nothing reached ComfyUI"


async def test_an_absolute_path_is_refused_and_a_long_one_is_not_echoed_whole(qm, comfy, make_worker, bobs_result):
    deep = "/" + "a/" * 2000 + "x.png"
    absolute = qm.store.submit("alice", load_and_save(str(bobs_result)))
    long = qm.store.submit("alice", load_and_save(deep))
    assert await make_worker().run() == 0
    [refused] = qm.reports.landed(absolute.id)
    assert refused.endpoint == "fail-job"
    assert refused.body["error"].endswith(f"input 'image': {str(bobs_result)!r:.80} leaves ComfyUI's input folder")
    [refused_long] = qm.reports.landed(long.id)
    assert refused_long.endpoint == "fail-job"
    assert "'/a/a/a/" in refused_long.body["error"] and len(refused_long.body["error"]) < 250
    assert comfy.prompts_received == []


@pytest.mark.parametrize(
    ("node", "where", "folder"),
    [
        ({"class_type": "LoadImageMask", "inputs": {"image": "../m.png", "channel": "alpha"}}, "input 'image'",
         "input"),
        ({"class_type": "LoadImageOutput", "inputs": {"image": "../../x.png [output]"}}, "input 'image'", "output"),
        ({"class_type": "LoadAudio", "inputs": {"audio": "/etc/passwd"}}, "input 'audio'", "input"),
        ({"class_type": "LoadVideo", "inputs": {"file": "a\\..\\..\\v.mp4"}}, "input 'file'", "input"),
        ({"class_type": "Load3D", "inputs": {"model_file": "3d/a.glb", "width": 8, "height": 8,
                                             "image": {"image": "x.png", "mask": "../m.png", "recording": ""}}},
         "input 'image' key 'mask'", "input"),
        ({"class_type": "SaveImageDataSetToFolder", "inputs": {"images": ["9", 0], "folder_name": "../bob",
                                                               "filename_prefix": "image"}},
         "input 'folder_name'", "output"),
        ({"class_type": "SaveImageTextDataSetToFolder", "inputs": {"images": ["9", 0], "texts": "t",
                                                                   "folder_name": "d", "filename_prefix": "/tmp/x"}},
         "input 'filename_prefix'", "output"),
        ({"class_type": "LoadTrainingDataset", "inputs": {"folder_name": "../../srv"}}, "input 'folder_name'",
         "output"),
        ({"class_type": "OpenAIInputFiles", "inputs": {"file": "../../x.txt"}}, "input 'file'", "input"),
    ],
)  # fmt: skip
async def test_every_core_node_that_joins_a_name_to_a_folder_is_checked(qm, comfy, make_worker, node, where, folder):
    workflow = {"9": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "1": node}  # fmt: skip
    job = qm.store.submit("alice", workflow)
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    error = report.body["error"]
    assert error.startswith(f"Invalid job: job 'workflow' node '1' ({node['class_type']}) {where}: "), error
    assert error.endswith(f" leaves ComfyUI's {folder} folder"), error
    assert comfy.prompts_received == []


@pytest.mark.parametrize(
    ("node", "where", "folder"),
    [
        # a STRING output meets a STRING input: ComfyUI's validation passes it, and the node writes where it says
        ({"class_type": "SaveImageDataSetToFolder", "inputs": {"images": ["9", 0], "folder_name": ["s", 0],
                                                               "filename_prefix": "image"}},
         "input 'folder_name' is linked to node 's'", "output"),
        ({"class_type": "SaveImageTextDataSetToFolder", "inputs": {"images": ["9", 0], "texts": "t",
                                                                   "folder_name": "d", "filename_prefix": ["s", 0]}},
         "input 'filename_prefix' is linked to node 's'", "output"),
        # ComfySwitchNode's output matches any input type, RecordAudio's custom type has no validation
        ({"class_type": "RecordAudio", "inputs": {"audio": ["w", 0]}}, "input 'audio' is linked to node 'w'", "input"),
        ({"class_type": "LoadImage", "inputs": {"image": ["w", 0]}}, "input 'image' is linked to node 'w'", "input"),
        # a choice ComfyUI checks against its list when written, not when linked: bob's results, as a dataset
        ({"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": ["w", 0]}},
         "input 'folder' is linked to node 'w'", "input"),
        ({"class_type": "GeminiInputFiles", "inputs": {"file": ["w", 0]}}, "input 'file' is linked to node 'w'",
         "input"),
        ({"class_type": "LoadTrainingDataset", "inputs": {"folder_name": [7, 0]}}, "input 'folder_name' is linked",
         "output"),
    ],
)  # fmt: skip
async def test_a_name_made_by_another_node_is_refused(qm, comfy, make_worker, node, where, folder):
    workflow = {
        "9": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "s": {"class_type": "StringConcatenate", "inputs": {"string_a": "../../", "string_b": BOBS, "delimiter": ""}},
        "w": {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": ["s", 0], "on_false": ["s", 0]}},
        "1": node,
    }
    job = qm.store.submit("alice", workflow)
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"] == (
        f"Invalid job: job 'workflow' node '1' ({node['class_type']}) {where}: ComfyUI would join the name that "
        f"node makes to its {folder} folder unchecked; write the name in the workflow itself"
    )
    assert comfy.prompts_received == []


async def test_names_inside_their_folder_and_dots_in_a_prompt_pass_while_a_way_out_is_refused(
    qm, comfy, make_worker, workflows, tmp_path
):
    for folder in ("alice", "3d"):
        (comfy.input_dir / folder).mkdir(exist_ok=True)
    (comfy.input_dir / "alice" / "photo.png").write_bytes(png_bytes(Image(7, 5, (9, 9, 9))))
    (comfy.input_dir / "3d" / "x.png").write_bytes(png_bytes(Image(2, 3, (9, 9, 9))))
    (comfy.output_dir / "earlier.png").write_bytes(png_bytes(Image(3, 9, (9, 9, 9))))
    prompt = "a lighthouse, ../../etc/passwd, C:\\x and /abs/olute .. nothing to refuse"
    workflow = workflows["sdxl_txt2img"]
    workflow["6"]["inputs"]["text"] = prompt
    workflow["5"]["inputs"].update(width=64, height=64)
    for n, name in enumerate(("alice/photo.png", "3d/x.png", "earlier.png [output]")):
        workflow[f"l{n}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        workflow[f"s{n}"] = {"class_type": "SaveImage", "inputs": {"images": [f"l{n}", 0], "filename_prefix": f"in{n}"}}
    fine = qm.store.submit("alice", workflow)
    hostile = qm.store.submit("alice", load_and_save(f"alice/../../{BOBS}"))
    assert await make_worker().run() == 0

    [done] = qm.reports.landed(fine.id)
    assert done.endpoint == "complete-job", done.body
    outputs = done.body["result"]["outputs"]
    sizes = {item["node_id"]: image_size((tmp_path / "outputs" / item["path"]).read_bytes()) for item in outputs}
    assert sizes == {"9": (64, 64), "s0": (7, 5), "s1": (2, 3), "s2": (3, 9)}
    [sent] = comfy.prompts_received
    assert sent.body["prompt"]["6"]["inputs"]["text"] == prompt, "the prompt reached ComfyUI as written"
    assert json.dumps(sent.body["prompt"]).count("..") >= 2

    [refused] = qm.reports.landed(hostile.id)
    assert refused.endpoint == "fail-job" and "leaves ComfyUI's input folder" in refused.body["error"]
