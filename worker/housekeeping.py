"""Tidy ComfyUI once a prompt is over: drop its history entry and delete its files from ComfyUI's folders.

Left alone, a replica that lives for hours keeps everything its ComfyUI ever did: up to 10,000 history entries in
memory, each holding the whole workflow, and every result and preview on its disk. All of this is best effort: a
failure is one warning line and never changes a job's report.

Result files outlive their prompt a little. ComfyUI caches output nodes: a prompt whose SaveImage gets the same
inputs as in the prompt before does not run it again, and names that prompt's files in its history. ComfyUI's
default (classic) cache holds only the nodes of its latest prompt, and a prompt that succeeded ran or replayed
every output node it has, so a result file can go once a later prompt succeeded without naming it. With
--cache-lru or --cache-ram ComfyUI may replay the outputs of any earlier prompt: result files are then kept.
Previews (`temp`) are never read back by the worker: they go as soon as their prompt is over.

The names of the result files kept for a replay live in the worker's memory, and a run killed beside a ComfyUI
that goes on running loses them: so the history entry of each prompt whose result files are kept stays in ComfyUI
as long as they do (the latest success's and the failed prompts' since; at most KEPT_HISTORY_ENTRIES, the oldest
deleted first). A restarted run finds them among the earlier run's prompts below and keeps their files until its
own first success, as the killed run would have.

A run of the worker killed mid-job (a bare comfy-worker beside a ComfyUI that goes on running) left its prompt's
history entry and files. The next run with the same WORKER_ID finds them by the mark in each prompt's extra_data:
the finished ones in ComfyUI's latest EARLIER_RUN_HISTORY_ITEMS entries at start, the one it interrupted at start
once that is over (after the run's first prompt, which ComfyUI runs after it; if that prompt timed out queued
behind one that ignored its interrupt, after the first that ran). A retry of a job interrupts the
prompt its earlier attempt left running, on whichever worker, and tidies it the same way. Their files go as any
other prompt's: a result file ComfyUI's cache may name again is kept until a later prompt succeeded without naming
it. ComfyUI runs its prompts one at a time, so each of them ran after every prompt this run tidied before.

A ComfyUI that dies and is started again (beside a bare comfy-worker; in the image the worker exits with it) has
lost its queue, history and cache, not its files. The worker sees the restart in the number ComfyUI gives its next
prompt (the answer to POST /prompt; counted from 0 at ComfyUI's start, one up per prompt sent): not above that of
its previous prompt. Then no prompt can name a kept result file again, nor a file of that previous prompt, which
ComfyUI may have died in (its job handed back, or abandoned if cancelled meanwhile): both go, the latter by the
names its `executed` events gave. Prompts of other clients sent in between can hide a restart: then the kept files
go at the next success, as without one.

No job may deliver more than MAX_JOB_OUTPUT_FILES results, so no more than that many are kept for a replay: a
prompt that named more has its files deleted at once, and failed prompts in a row that named more together have
all but the latest one's deleted. Otherwise the names the worker keeps (a set in memory) grew with every failed
prompt until the next success, however many files each one named.

No file is deleted that cannot be shown written for the prompt that named it: its mtime must not be older than
that prompt's sending by more than MTIME_SLACK_S. For a result ComfyUI's cache replayed that is the first prompt
that named it; for a prompt an earlier run left, the `execution_start` its history entry gives (without one,
its files are kept); a result whose bytes the delivery found to be those ComfyUI served is ComfyUI's whatever
its age. An older file means the folder setting names a folder that is not ComfyUI's alone (an old copy of its
outputs, a persistent volume, another ComfyUI's folder), whose files of the names ComfyUI counts up were never
the worker's: the first one is named in a warning and nothing in that folder is deleted from then on, as when
the delivery finds a look-alike there.

The images a job carried (worker/input_images.py) go from COMFYUI_INPUT_DIR once its prompt is over, however it
ended: on a replica several users share, a later job naming one without carrying it would load it. Only the file
the upload wrote goes: at the name it was uploaded to, a regular file reached without a symbolic link, still
holding the bytes uploaded and, when the worker could see it right after the upload, still the file it saw then
(device, inode, mtime and size: another client's upload of the name since with `overwrite` is kept, of the same
bytes too, which ComfyUI writes over the same inode with a later mtime); and the subfolder the upload made for it,
once empty. Two uploads of the same bytes look like one: without `overwrite` ComfyUI writes nothing (the file is
there already), and one written over in the timestamp tick of ours (coarse clocks: Linux before 6.13, FAT, some NFS
servers) leaves the mtime as it was; that client's file goes with the job. A run killed mid-job leaves them (in the
image, the default folder is emptied at the container's next start: supervisor/scratch.py).
"""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import structlog

from worker.comfyui import WORKER_ID_KEY, ComfyUIClient, ComfyUIUnavailable, ReplyTooLarge
from worker.input_images import InputImage
from worker.outputs import (
    MTIME_SLACK_S,
    OutputDeliveryError,
    inside,
    relative_output_path,
    remove_empty_parents,
    result_files,
)

if TYPE_CHECKING:
    from worker.execution import PromptRun

log = structlog.get_logger()

CACHES_OF_EARLIER_PROMPTS = ("--cache-lru", "--cache-ram")  # ComfyUI's options that keep more than one prompt
# How far back in ComfyUI's history a restarted worker looks for what its killed run left: that run tidied each
# prompt once it was over, so only its last one or two are there; other clients of the ComfyUI add theirs.
EARLIER_RUN_HISTORY_ITEMS = 50
# History entries kept for the names of the result files a replay may need (each holds its whole workflow): past
# it the oldest is deleted, and its files are known to this run alone.
KEPT_HISTORY_ENTRIES = 10
# When the prompt that named a file was sent (time.time()): the file was written for it if its mtime is not older
# (MTIME_SLACK_S aside). UNKNOWN: no file is shown written for it, all are kept. SHOWN: the delivery found the
# file's bytes to be those ComfyUI served for the prompt (a replay of its cache).
UNKNOWN = math.inf
SHOWN = -math.inf
Doomed = tuple[Path, PurePosixPath, float]  # a folder, a file in it, and when the prompt that named it was sent
# A file as it is on disk: st_dev, st_ino, st_mtime_ns, st_size. A write over it (ComfyUI's upload of the name
# opens it "wb") changes the mtime, whatever bytes it writes.
FileIdentity = tuple[int, int, int, int]


def caches_earlier_prompts(argv: object) -> bool | None:
    """Whether ComfyUI started with these arguments (the `argv` of /system_stats) may replay the outputs of a
    prompt before its latest; None when argv is not a list of strings. argparse takes a prefix of an option
    name, and `--cache-ram` without a number means 4 GB."""
    if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
        return None
    for index, arg in enumerate(argv):
        name, has_value, value = arg.partition("=")
        matches = [o for o in CACHES_OF_EARLIER_PROMPTS if len(name) > len("--cache-") and o.startswith(name)]
        if not matches:
            continue
        if not has_value:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        try:
            size = float(value)
        except ValueError:
            size = 4.0 if matches == ["--cache-ram"] else 0.0
        if size > 0:
            return True
    return False


@dataclass(frozen=True)
class EarlierPrompt:
    """Of a prompt whose job is over, what a restart of ComfyUI found at the next prompt needs: the files its
    `executed` events named, not their whole outputs (a 16 MiB text stayed in an idle worker's memory)."""

    number: int | None
    prompt_id: str | None
    sent_at: float | None
    executed_outputs: dict[str, Any]

    @classmethod
    def of(cls, run: PromptRun) -> EarlierPrompt:
        files: dict[str, dict[str, list[dict[str, str]]]] = {}
        for folder_type in ("temp", "output"):
            for file in result_files(run.executed_outputs, folder_type):
                entry = {"filename": file.filename, "subfolder": file.subfolder, "type": folder_type}
                files.setdefault(file.node_id, {}).setdefault(file.kind, []).append(entry)
        return cls(run.number, run.prompt_id, run.sent_at, files)


class ComfyUIHousekeeping:
    def __init__(
        self,
        comfy: ComfyUIClient,
        *,
        output_dir: Path | None,
        temp_dir: Path | None,
        outputs_root: Path,
        max_files: int = 10_000,
        input_dir: Path | None = None,
    ) -> None:
        self.comfy = comfy
        self.max_files = max_files
        self.outputs_root = outputs_root
        self.output_dir = self._deletable(output_dir, "COMFYUI_OUTPUT_DIR")
        self.temp_dir = self._deletable(temp_dir, "COMFYUI_TEMP_DIR")
        self.input_dir = input_dir  # looked at before an upload even where nothing in it is deleted
        self._delete_inputs = self._deletable(input_dir, "COMFYUI_INPUT_DIR") is not None
        self._settings = {folder: name for folder, name in ((output_dir, "COMFYUI_OUTPUT_DIR"),
                                                            (temp_dir, "COMFYUI_TEMP_DIR")) if folder}  # fmt: skip
        # Result files ComfyUI's cache may still name again, with when the first prompt that named them was sent.
        self._replayable: dict[PurePosixPath, float] = {}
        # Prompts whose result files are kept, oldest first, with those files: their history entries stay as long.
        self._kept_entries: dict[str, frozenset[PurePosixPath]] = {}
        self._previous: PromptRun | EarlierPrompt | None = None  # this worker's latest prompt
        self._freed_by_restart: list[Doomed] = []  # to delete once the job is reported
        self._folders_checked: set[str] = set()  # the folder types check_folders looked at
        self._kept_folders: set[Path] = set()  # shown not ComfyUI's alone: nothing there is deleted (_keep_folder)
        self._uploads_seen: dict[str, FileIdentity] = {}  # the current job's images as each upload left them

    def _deletable(self, folder: Path | None, setting: str) -> Path | None:
        """The folder, or None when it is OUTPUTS_PATH or inside it: no file there is ever deleted."""
        if folder is not None and inside(folder, self.outputs_root):
            log.warning(
                f"{setting} is OUTPUTS_PATH or inside it: ComfyUI's files there are never deleted, so they pile "
                "up on that disk", **{setting: str(folder), "OUTPUTS_PATH": str(self.outputs_root)},
            )
            return None
        return folder

    def keep_output_folder(self) -> None:
        """COMFYUI_OUTPUT_DIR was shown not to be ComfyUI's output folder (it holds files of results' names that
        ComfyUI did not write: worker/outputs.py): from now on no file there is deleted, queued ones included."""
        if self.output_dir is not None:
            self._kept_folders.add(self.output_dir)
        self.output_dir = None
        self._replayable = {}  # and the history entries kept for their names go at the next tidy

    def _keep_folder(self, folder: Path, relative: PurePosixPath, older_by_s: float) -> None:
        """A file of a name ComfyUI gave a prompt was written before that prompt was sent: not for it, so the
        folder is not ComfyUI's alone, and from now on nothing there is deleted. Said once a folder."""
        if folder == self.output_dir:
            self.keep_output_folder()
        if folder == self.temp_dir:
            self.temp_dir = None
        self._kept_folders.add(folder)
        setting = self._settings.get(folder, "COMFYUI_OUTPUT_DIR")
        log.warning(f"{setting} holds a file of a name ComfyUI gave a prompt, written before that prompt was sent: "
                    "it is not ComfyUI's folder alone, and nothing there is deleted from now on",
                    **{setting: str(folder)}, file=str(relative), older_by_s=round(older_by_s, 1))  # fmt: skip

    def check_cache(self, comfyui_argv: object) -> None:
        """At start, from ComfyUI's /system_stats: keep result files if its cache may replay old ones."""
        caches = caches_earlier_prompts(comfyui_argv)
        if caches is False or self.output_dir is None:
            return
        why = "ComfyUI's arguments are unknown" if caches is None else "ComfyUI runs with --cache-lru or --cache-ram"
        log.warning(
            "Result files are left in ComfyUI's output folder: its cache may name them again in a later prompt",
            reason=why, comfyui_output_dir=str(self.output_dir),
        )
        self.output_dir = None

    def prompt_queued(self, run: PromptRun) -> None:
        """ComfyUI queued a prompt of this worker, numbered run.number. ComfyUI counts the prompts it is sent from 0
        at its start: a number not above that of this worker's previous prompt means ComfyUI restarted in between,
        and its queue, history and cache went with it. Then no prompt can name again the result files kept for a
        replay, nor the files of that previous prompt (the one ComfyUI died in, if it was still running; its
        `executed` events named them): they go after the job's report (delete_freed_by_restart)."""
        previous, self._previous = self._previous, run
        if run.number is None or previous is None or previous.number is None or run.number > previous.number:
            return
        outputs, sent = previous.executed_outputs, _known(previous.sent_at)
        named = [*_files_in(self.temp_dir, outputs, "temp"), *_files_in(self.output_dir, outputs, "output")]
        since = {} if self.output_dir is None else {(self.output_dir, n): t for n, t in self._replayable.items()}
        for file in named:
            since[file] = min(since.get(file, sent), sent)
        freed = sorted((folder, name, at) for (folder, name), at in since.items())
        log.info("ComfyUI restarted since this worker's previous prompt: deleting the files no prompt can name "
                 "any more", files=len(freed), previous_prompt_id=previous.prompt_id)  # fmt: skip
        self._freed_by_restart += freed
        self._replayable, self._kept_entries = {}, {}

    def prompt_over(self, run: PromptRun) -> None:
        """The job of ``run`` is over: of it, only what prompt_queued may need is kept."""
        if self._previous is run:
            self._previous = EarlierPrompt.of(run)

    def check_folders(self, outputs: dict[str, Any], cached_nodes: Collection[str] = ()) -> None:
        """Once per folder, on the first prompt of this worker that wrote files there: warn when COMFYUI_OUTPUT_DIR
        (COMFYUI_TEMP_DIR) holds none of the results (previews) ComfyUI named. Set to another folder (ComfyUI's
        base directory, --temp-directory without the temp ComfyUI appends, a typo), the worker deleted nothing
        (a missing file is no error: ComfyUI clears its temp folder at start) and the files piled up unsaid.
        The files of cached_nodes are left out: ComfyUI's cache replayed them, and an earlier prompt wrote them,
        which may have been tidied away since (a preview, deleted once its prompt was over)."""
        outputs = {node: output for node, output in outputs.items() if node not in cached_nodes}
        for folder, folder_type in ((self.output_dir, "output"), (self.temp_dir, "temp")):
            files = [] if folder_type in self._folders_checked else _files_in(folder, outputs, folder_type)
            if files:
                self._folders_checked.add(folder_type)
                _warn_if_none_there(files, folder_type)

    def missing_input_folders(self, images: Sequence[InputImage]) -> frozenset[str]:
        """Before the upload: the subfolders of the images' names that COMFYUI_INPUT_DIR lacks, which ComfyUI
        makes for them (delete_uploads removes them once empty)."""
        if self.input_dir is None or not self._delete_inputs:
            return frozenset()
        folder = self.input_dir
        return frozenset(i.subfolder for i in images if i.subfolder and not os.path.lexists(folder / i.subfolder))

    async def unsavable_image(self, images: Sequence[InputImage]) -> str | None:
        """Before the upload: why ComfyUI cannot save an image where its name puts it in COMFYUI_INPUT_DIR (a
        folder of that name, as ComfyUI's own `3d/`, or a file where its folder would be), naming the field;
        None when it can, or when the folder is not visible. ComfyUI's upload answers such a name HTTP 500, like
        a read-only folder's, and a retry of the job would get the same."""
        if self.input_dir is None:
            return None
        return await asyncio.to_thread(_unsavable, self.input_dir, images)

    async def image_uploaded(self, image: InputImage) -> None:
        """ComfyUI saved the image: note the file as it is now, so that delete_uploads tells it from a file of the
        same name and bytes another client uploads later. Nothing noted when COMFYUI_INPUT_DIR does not show it
        (unset, or not ComfyUI's input folder)."""
        if self.input_dir is None or not self._delete_inputs:
            return
        try:
            found = await asyncio.to_thread(_read_uploaded, self.input_dir, image, 0)
        except OSError:
            return
        if found is not None:
            self._uploads_seen[image.name] = found[0]

    async def delete_uploads(self, images: Sequence[InputImage], made_folders: frozenset[str]) -> None:
        """The job's prompt is over: delete from COMFYUI_INPUT_DIR the images uploaded for it that are still as
        the upload left them, and the subfolders it made that are empty."""
        seen, self._uploads_seen = self._uploads_seen, {}
        if self.input_dir is None or not (images or made_folders):
            return
        folder = self.input_dir
        if images and "input" not in self._folders_checked:
            self._folders_checked.add("input")
            _warn_if_none_there([(folder, PurePosixPath(image.name)) for image in images], "input")
        if self._delete_inputs:
            await asyncio.to_thread(_delete_uploads, folder, images, made_folders, seen)

    async def delete_freed_by_restart(self) -> None:
        if self._freed_by_restart:
            doomed, self._freed_by_restart = self._freed_by_restart, []
            await asyncio.to_thread(self._delete, doomed)

    async def tidy(
        self,
        prompt_id: str,
        outputs: dict[str, Any],
        *,
        succeeded: bool,
        sent_at: float | None,
        timeout_s: float,
        replays: Collection[PurePosixPath] = (),
    ) -> bool:
        """A prompt is over: delete its files (delete_files) and its history entry, unless its result files are
        kept for a replay; and the entries of earlier prompts whose files are gone. False when ComfyUI did not
        confirm a deletion (forget)."""
        kept = await self.delete_files(outputs, succeeded=succeeded, sent_at=sent_at, replays=replays)
        replayable = self._replayable.keys()
        doomed = [earlier for earlier, its in self._kept_entries.items() if succeeded or not its <= replayable]
        for earlier in doomed:
            del self._kept_entries[earlier]
        if kept:
            self._kept_entries[prompt_id] = kept
        else:
            doomed.append(prompt_id)
        while len(self._kept_entries) > KEPT_HISTORY_ENTRIES:
            oldest = next(iter(self._kept_entries))
            del self._kept_entries[oldest]
            doomed.append(oldest)
        for doomed_id in doomed:
            if not await self.forget(doomed_id, timeout_s):
                return False
        return True

    async def forget(self, prompt_id: str, timeout_s: float) -> bool:
        """Delete the prompt's history entry; False (and a warning) when ComfyUI did not confirm in time."""
        try:
            await self.comfy.delete_history(prompt_id, timeout_s)
        except ComfyUIUnavailable as exc:
            log.warning(
                "Could not delete the prompt from ComfyUI's history: it stays in ComfyUI's memory until ComfyUI "
                "restarts", prompt_id=prompt_id, error=str(exc),
            )
            return False
        return True

    async def tidy_earlier_run(self, worker_id: str, timeout_s: float) -> None:
        """Delete the history entries and files of the prompts a killed run of ``worker_id`` left finished in
        ComfyUI. Each question to ComfyUI gets timeout_s; the first unanswered one ends the tidy (a warning)."""
        try:
            async with asyncio.timeout(timeout_s):
                entries = await self.comfy.history_of(WORKER_ID_KEY, worker_id, EARLIER_RUN_HISTORY_ITEMS)
        except (TimeoutError, ComfyUIUnavailable, ReplyTooLarge) as exc:
            log.warning("Could not look for what an earlier run of this worker left in ComfyUI's history",
                        error=str(exc) or f"no answer within {timeout_s:g} s")  # fmt: skip
            return
        for prompt_id, entry in entries.items():
            if not await self._tidy_entry(prompt_id, entry, timeout_s):
                return

    async def tidy_once_over(self, prompt_ids: set[str], timeout_s: float) -> set[str]:
        """Delete the history entries and files of these prompts, interrupted at start or by a job's retry, once
        ComfyUI has finished them. Asked after a later prompt: ComfyUI runs its prompts in turn, so they are over
        by then, unless one ignored its interrupt and the later prompt timed out queued behind it. The ids of those
        ComfyUI still runs or queues, to ask again after the next prompt."""
        waiting: set[str] = set()
        for prompt_id in sorted(prompt_ids):
            try:
                async with asyncio.timeout(timeout_s):
                    entry = await self.comfy.history(prompt_id)
                    if entry is None:
                        running, pending = await self.comfy.queued_prompt_ids()
                        waiting |= {prompt_id} & (running | pending)
            except (TimeoutError, ComfyUIUnavailable, ReplyTooLarge) as exc:
                log.warning("Could not read the history entry of a prompt an earlier run left", prompt_id=prompt_id,
                            error=str(exc) or f"no answer within {timeout_s:g} s")  # fmt: skip
                return waiting
            if entry is not None and not await self._tidy_entry(prompt_id, entry, timeout_s):
                return waiting
        return waiting

    async def _tidy_entry(self, prompt_id: str, entry: dict[str, Any], timeout_s: float) -> bool:
        """False when ComfyUI did not confirm the deletion of a history entry (forget)."""
        outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        succeeded = status.get("status_str") == "success"
        started = execution_start(status)
        if started is None and (result_files(outputs) or result_files(outputs, "temp")):
            log.warning("Keeping the files of a prompt an earlier run left: ComfyUI's history does not say when it "
                        "ran, so none of them is shown written for it", prompt_id=prompt_id)  # fmt: skip
        if not await self.tidy(prompt_id, outputs, succeeded=succeeded, sent_at=started, timeout_s=timeout_s):
            return False
        if prompt_id in self._kept_entries:
            log.info("Keeping the result files of a prompt an earlier run left until a prompt succeeds: ComfyUI's "
                     "cache may name them again", prompt_id=prompt_id, status=status.get("status_str"),
                     files=len(self._kept_entries[prompt_id]))  # fmt: skip
        else:
            log.info("Deleted a prompt an earlier run left in ComfyUI's history",
                     prompt_id=prompt_id, status=status.get("status_str"))
        return True

    async def delete_files(
        self,
        outputs: dict[str, Any],
        *,
        succeeded: bool,
        sent_at: float | None,
        replays: Collection[PurePosixPath] = (),
    ) -> frozenset[PurePosixPath]:
        """The files of a prompt that is over (its history `outputs`, all of them or those the worker saw), and
        the result files of earlier prompts that ComfyUI's cache can no longer name. Its result files kept.
        sent_at: when the prompt was sent (time.time()); replays: its result files the delivery found to have
        the bytes ComfyUI served."""
        doomed, kept = self._done_with(outputs, succeeded, _known(sent_at), replays)
        if doomed:
            await asyncio.to_thread(self._delete, doomed)
        return kept

    def _done_with(
        self, outputs: dict[str, Any], succeeded: bool, sent: float, replays: Collection[PurePosixPath]
    ) -> tuple[list[Doomed], frozenset[PurePosixPath]]:
        doomed = [(folder, name, sent) for folder, name in _files_in(self.temp_dir, outputs, "temp")]
        keep: set[PurePosixPath] = set()
        if self.output_dir is not None:
            named = _named(outputs, "output")
            keep = named if len(named) <= self.max_files else set()  # more than a job may deliver: never replayed
            kept = keep if succeeded else self._replayable.keys() | keep
            if len(kept) > self.max_files:  # failed prompts in a row: the latest one's are kept
                kept = keep
            # A name ComfyUI's cache replayed was written for the first prompt that named it.
            since = self._replayable | {name: min(self._replayable.get(name, sent), sent) for name in named}
            since |= dict.fromkeys(named.intersection(replays), SHOWN)
            doomed += [(self.output_dir, name, since[name]) for name in sorted(since.keys() - kept)]
            self._replayable = {name: since[name] for name in kept}
        return doomed, frozenset(keep)

    def _delete(self, files: list[Doomed]) -> None:
        for root, relative, sent in files:
            if root in self._kept_folders or sent == UNKNOWN:
                continue
            path = root / relative
            try:
                if not inside(path, root) or inside(path, self.outputs_root):
                    log.warning("Not deleting a file ComfyUI named: it leads out of ComfyUI's folder or into "
                                "OUTPUTS_PATH", file=str(path))  # fmt: skip
                    continue
                written = _mtime(path)
                if written < sent - MTIME_SLACK_S:
                    self._keep_folder(root, relative, sent - written)
                    continue
                path.unlink(missing_ok=True)
                remove_empty_parents(path.parent, keep=root)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("Could not delete a file of ComfyUI's", file=str(path), error=error)


def _warn_if_none_there(files: list[tuple[Path, PurePosixPath]], folder_type: str) -> None:
    """files: those a prompt wrote, in the folder the setting names. Where the first one is when not there:
    <folder>/output for ComfyUI's base directory, <folder>/temp for its --temp-directory."""
    if any((folder / relative).exists() for folder, relative in files):
        return
    folder, relative = files[0]
    likely = folder / folder_type
    setting = f"COMFYUI_{folder_type.upper()}_DIR"
    what = "previews" if folder_type == "temp" else "uploaded images" if folder_type == "input" else "result files"
    log.warning(f"{setting} holds none of the {what} ComfyUI wrote: they are never deleted and pile up on "
                "ComfyUI's disk", **{setting: str(folder)}, file=str(relative),
                found_in=str(likely) if (likely / relative).is_file() else None)  # fmt: skip


def _unsavable(folder: Path, images: Sequence[InputImage]) -> str | None:
    for index, image in enumerate(images):
        where = f"metadata.images[{index}].name: {image.name!r}"
        if os.path.isdir(folder / image.name):
            return f"{where} is a folder in ComfyUI's input folder: ComfyUI cannot save a file there; name it otherwise"
        parent = folder / image.subfolder
        if image.subfolder and os.path.lexists(parent) and not os.path.isdir(parent):
            return (f"{where} puts it in {image.subfolder!r}, a file in ComfyUI's input folder, not a folder; "
                    "name it otherwise")  # fmt: skip
    return None


def _delete_uploads(
    folder: Path, images: Sequence[InputImage], made_folders: frozenset[str], seen: dict[str, FileIdentity]
) -> None:
    for image in images:
        path = folder / image.name
        try:
            if not _still_uploaded(folder, image, seen.get(image.name)):
                log.info("Keeping an image of the job in COMFYUI_INPUT_DIR: it is no longer the file the upload "
                         "wrote (another client's since, or a link)", file=image.name)  # fmt: skip
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("Could not delete an image of the job from ComfyUI's input folder", file=str(path),
                        error=f"{type(exc).__name__}: {exc}")  # fmt: skip
    for subfolder in made_folders:
        remove_empty_parents(folder / subfolder, keep=folder)


def _still_uploaded(folder: Path, image: InputImage, seen: FileIdentity | None) -> bool:
    """Whether folder/image.name is the file the upload wrote: a regular file reached without a symbolic link,
    holding image.data, and the file image_uploaded saw (when it saw one). FileNotFoundError when there is none."""
    found = _read_uploaded(folder, image, len(image.data) + 1)
    if found is None:
        return False
    identity, data = found
    return data == image.data and (seen is None or seen == identity)


def _read_uploaded(folder: Path, image: InputImage, size: int) -> tuple[FileIdentity, bytes] | None:
    """The identity and first ``size`` bytes of folder/image.name; None when it is not a regular file reached
    without a symbolic link. FileNotFoundError when there is none."""
    path = folder / image.name
    try:
        linked = path.resolve() != folder.resolve() / image.name  # a link on the way, the file's own included
    except RuntimeError:  # a symbolic link loop on the way (Python 3.11's resolve() raises it): a link too
        return None
    if linked:
        return None
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(descriptor, "rb") as file:
        found = os.fstat(descriptor)
        if not stat.S_ISREG(found.st_mode):
            return None
        return (found.st_dev, found.st_ino, found.st_mtime_ns, found.st_size), file.read(size)


def execution_start(status: dict[str, Any]) -> float | None:
    """When ComfyUI started the prompt (time.time()), from its history entry's `status`: the timestamp (ms) of
    its `execution_start` message; None when not there (a ComfyUI older than those timestamps)."""
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    for message in messages:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_start":
            stamp = message[1].get("timestamp") if isinstance(message[1], dict) else None
            if isinstance(stamp, int | float) and not isinstance(stamp, bool) and math.isfinite(stamp):
                return stamp / 1000
    return None


def _known(sent_at: float | None) -> float:
    return UNKNOWN if sent_at is None else sent_at


def _mtime(path: Path) -> float:
    """The mtime of the file itself (a link's own); infinity when there is none: nothing to keep."""
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return math.inf


def _files_in(folder: Path | None, outputs: dict[str, Any], folder_type: str) -> list[tuple[Path, PurePosixPath]]:
    return [] if folder is None else [(folder, relative) for relative in sorted(_named(outputs, folder_type))]


def _named(outputs: dict[str, Any], folder_type: str) -> set[PurePosixPath]:
    names = set()
    for item in result_files(outputs, folder_type):
        try:
            names.add(relative_output_path(item.subfolder, item.filename))
        except OutputDeliveryError as exc:
            log.warning("Not deleting a file ComfyUI named unsafely", error=str(exc))
    return names

