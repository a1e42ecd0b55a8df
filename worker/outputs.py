"""Copy a prompt's result files into OUTPUTS_PATH/<user_id>/<job_id>/, atomically, never outside the root.

A delivery is staged in a folder of its own under OUTPUTS_PATH/.partial/ and renamed into place once every file
is in it: the job's folder appears whole or not at all. A worker killed mid-delivery (SIGKILL, OOM, a lost
machine) leaves only its staging folder, which any worker's start removes once it has been left untouched for
STALE_STAGING_S by the volume's own clock. A live delivery touches its folder every STAGING_TOUCH_S, so the
folder of a replica still writing, on a volume several replicas share, is never taken for an abandoned one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

import structlog

from common.durable import sync, sync_folder
from common.text import encodes_as_utf8
from worker.comfyui import VIEW_PIECE_BYTES, ComfyUIClient, ComfyUIUnavailable, FileNotServed

log = structlog.get_logger()
T = TypeVar("T")
CHUNK = 1 << 20
# Errors of the disk OUTPUTS_PATH is on, not of the job: full, over quota, read-only, failing.
OUR_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
STAGING_FOLDER = ".partial"  # OUTPUTS_PATH/.partial/: deliveries in progress, never a result
STAGING_TOUCH_S = 30.0  # a live delivery touches its staging folder this often
# Untouched this long by the volume's clock, a staging folder's writer is dead: 120 missed touches, far above an
# NFS client's attribute cache (60 s at most by default) and any clock step.
STALE_STAGING_S = 3600.0
# A removal run in a thread (the sweep of abandoned deliveries, the files of a job's earlier attempts) starts no new
# entry after this long: well under HEARTBEAT_TIMEOUT_S (120 s), and the worker keeps its heartbeat fresh only this
# long for it, so a slow volume is no wedged loop while one hung inside a single entry still is.
REMOVAL_BUDGET_S = 30.0
# A delivery keeps the worker's heartbeat fresh only while it moves: a chunk written, a file on disk, a step done
# within this long. A volume hung inside a write (an NFS server gone, a hard mount) then shows as a wedged worker
# this long plus HEARTBEAT_TIMEOUT_S later, and the platform replaces the replica (the job is retried), instead of
# /health saying ok while the job waits for ever. Generous: a step may be the fsync of SYNC_EVERY_BYTES on a slow
# volume.
DELIVERY_STALL_S = 600.0
# A file being delivered is synced every this many bytes, so no fsync has more to write: with one at the end, a
# machine with tens of GB of memory held GBs of a video in dirty pages, and their fsync on a slow volume (10 MB/s)
# took longer than DELIVERY_STALL_S in one step, so a healthy delivery showed as a wedged worker.
SYNC_EVERY_BYTES = 64 << 20
# A sweep that ran out of its budget goes on this long after, not STALE_STAGING_S: jobs are taken in between.
SWEEP_RESUME_S = 60.0
# OUTPUTS_PATH/<user>/<job>/@attempt-N/: the job's Nth attempt (N >= 2). Its own name, which no output's first
# folder may take, so a user's subfolder is never taken for one: "attempt-N/" (before) was also a filename_prefix's.
ATTEMPT_FOLDER = re.compile(r"@attempt-([0-9]+)")
NAME_MAX_BYTES = 255  # Linux's NAME_MAX: the longest name of one file or folder
PATH_MAX_BYTES = 1024  # subfolder/filename of one output; OUTPUTS_PATH/<user>/<job>/@attempt-N/ comes on top
# A node id (the workflow's: "3", "12:5" in a subgraph) and an output kind ("images", "gifs", "audio") are named in
# the report for each file: one of megabytes, from the workflow or a custom node, would be repeated per file.
MAX_LABEL_CHARS = 256
# A result file in COMFYUI_OUTPUT_DIR whose mtime is older than its prompt's sending by more than this was not
# written by it: last week's file of the same name (ComfyUI names by counters). 2 s: FAT's mtime granularity, far
# above the kernel's coarse file clock (a few ms behind time.time()).
MTIME_SLACK_S = 2.0


class OutputDeliveryError(Exception):
    """The job's outputs cannot be delivered because of the job (an unsafe path, a file ComfyUI will not serve)."""


class ComfyUILostDuringDelivery(OutputDeliveryError):
    """Not the job's fault: ComfyUI stopped answering while its files were fetched over /view."""


class OutputsDiskFailed(OutputDeliveryError):
    """Not the job's fault: the disk under OUTPUTS_PATH refused the write (full, over quota, read-only, failing)."""


class OutputsFolderRefused(OutputDeliveryError):
    """Not the job's fault: a folder under OUTPUTS_PATH refused this worker (EACCES, EPERM), one of another uid on
    a shared volume, say. Only some jobs' folders may be so: the worker goes on."""


class ComfyUIFolderTooSlow(OutputsFolderRefused):
    """Not the job's fault: COMFYUI_OUTPUT_DIR (a network volume, say) gave a result more slowly than
    VIEW_PIECE_BYTES per HTTP timeout. Handed back as a refused folder is: the worker goes on."""


class OutputsTooLarge(OutputDeliveryError):
    """The job's own fault: its outputs are more files or more bytes than MAX_JOB_OUTPUT_FILES/_MB allow."""


@dataclass(frozen=True)
class OutputLimits:
    files: int = 10_000
    bytes: int = 8192 << 20

    def check_count(self, count: int) -> None:
        if count > self.files:
            raise OutputsTooLarge(
                f"the prompt's history lists more than {self.files} output files (MAX_JOB_OUTPUT_FILES); "
                "nothing was delivered"
            )

    def check_labels(self, item: OutputFile) -> None:
        for field_name, value in (("node id", item.node_id), ("output kind", item.kind)):
            if len(value) > MAX_LABEL_CHARS:
                raise OutputsTooLarge(
                    f"a {field_name} in ComfyUI's history is {len(value)} characters long; at most "
                    f"{MAX_LABEL_CHARS}, as the report names it for each file: {_shown(value, 40)!r}"
                )

    def too_many_bytes(self, relative: PurePosixPath) -> OutputsTooLarge:
        return OutputsTooLarge(
            f"the job's outputs are larger than MAX_JOB_OUTPUT_MB ({self.bytes >> 20} MiB): output "
            f"{_shown(str(relative))} brings them past it; nothing was delivered"
        )


@dataclass(frozen=True)
class OutputFile:
    node_id: str
    kind: str  # the history key: images, gifs, videos, audio, 3d, ...
    filename: str
    subfolder: str


@dataclass(frozen=True)
class DeliveredFile:
    node_id: str
    kind: str
    path: str  # relative to OUTPUTS_PATH, with forward slashes
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_files(
    history_outputs: dict[str, Any], folder_type: str = "output", limits: OutputLimits | None = None
) -> list[OutputFile]:
    """Every list entry of that type with a filename: 'output' are the results; 'temp' (previews) are not.
    With limits: OutputsTooLarge as soon as there are more than limits.files, before more are listed."""
    files: list[OutputFile] = []
    for node_id, node_output in history_outputs.items():
        if not isinstance(node_output, dict):
            continue
        for kind, entries in node_output.items():
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if isinstance(entry, dict) and entry.get("type") == folder_type and entry.get("filename"):
                    subfolder = str(entry.get("subfolder") or "")
                    files.append(OutputFile(str(node_id), kind, str(entry["filename"]), subfolder))
                    if limits is not None:
                        limits.check_count(len(files))
                        limits.check_labels(files[-1])
    return files


def relative_output_path(subfolder: str, filename: str) -> PurePosixPath:
    """subfolder/filename as ComfyUI named them, refused if it could climb out of a directory. A backslash is part
    of a name, as on the Linux ComfyUI runs on: read as a folder, ``x\\y_00001_.png`` was taken for ``x/y_00001_.png``,
    another prompt's file (another user's)."""
    relative = PurePosixPath(subfolder) / filename
    unsafe = not relative.parts or relative.is_absolute() or any(part in ("..", "") for part in relative.parts)
    if unsafe or "\0" in str(relative):  # no parts: "." or "./", the folder itself
        raise OutputDeliveryError(
            f"unsafe output path from ComfyUI: subfolder={_shown(subfolder)!r} filename={_shown(filename)!r}"
        )
    if not encodes_as_utf8(str(relative)):  # a lone surrogate from ComfyUI's JSON: no file name, nor reportable
        raise OutputDeliveryError(f"output path from ComfyUI is not valid UTF-8: {_shown(str(relative))!a}")
    longest = max(relative.parts, key=lambda part: len(part.encode()))
    if len(longest.encode()) > NAME_MAX_BYTES or len(str(relative).encode()) > PATH_MAX_BYTES:
        raise OutputDeliveryError(
            f"output path from ComfyUI is too long ({len(str(relative).encode())} bytes, a name of "
            f"{len(longest.encode())}; at most {PATH_MAX_BYTES} and {NAME_MAX_BYTES}): subfolder="
            f"{_shown(subfolder)!r} filename={_shown(filename)!r}"
        )
    return relative


def _shown(text: str, chars: int = 120) -> str:
    """A name from ComfyUI as an error shows it: at most `chars` characters."""
    return text if len(text) <= chars else f"{text[:chars]}… ({len(text)} characters)"


def inside(path: Path, root: Path) -> bool:
    """Whether path, its links followed, is under root. A symbolic link loop on the way leads nowhere: False
    (Python 3.11's resolve() raises RuntimeError for one, which a custom node's file name made a crash)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except RuntimeError:
        return False


def remove_empty_parents(folder: Path, keep: Path) -> None:
    """folder and its parents, while they are empty, up to ``keep``: never ``keep`` itself or anything outside it."""
    while folder != keep and folder.is_relative_to(keep):
        try:
            folder.rmdir()
        except OSError:  # not empty, gone, or a link
            return
        folder = folder.parent


class OutputDelivery:
    def __init__(
        self,
        outputs_root: Path,
        comfy: ComfyUIClient,
        comfyui_output_dir: Path | None = None,
        limits: OutputLimits = OutputLimits(),
    ) -> None:
        self.outputs_root = outputs_root
        self.comfy = comfy
        self.comfyui_output_dir = comfyui_output_dir
        self.limits = limits
        self._next_sweep_at = -math.inf
        # When the delivery under way last wrote a chunk or finished a step (time.monotonic()): a volume hung
        # inside a write stops moving it, though the event loop, which waits for the copy's thread, is fine.
        self.progressed_at = time.monotonic()
        self._fetched_over_view = False  # said once: with COMFYUI_OUTPUT_DIR wrong it is every file of every job
        self._said_unreadable = False  # as is a result file there the worker may not read: every job's, likely
        # COMFYUI_OUTPUT_DIR held a file of a result's name with other bytes than ComfyUI served: not its folder
        self.found_look_alikes = False
        # Result files older than their prompt with the bytes ComfyUI served: its cache's replays, so ComfyUI's own
        # files, which housekeeping may delete (take_replays). Of the latest delivery.
        self._replays: set[PurePosixPath] = set()
        # Publishes a cancellation left running: their job is handed back, so what they publish is no result.
        self._unclaimed: list[_Publication] = []

    def job_dir(self, user_id: str, job_id: str, attempt: int | None = None) -> Path:
        """OUTPUTS_PATH/<user>/<job>/, and its @attempt-N/ subfolder for a retry of the same job id (N >= 2), so
        a late earlier attempt can never overwrite, or remove, the files of the one that counts."""
        job_dir = self.outputs_root / user_id / job_id
        if attempt is not None and attempt > 1:
            job_dir = job_dir / f"@attempt-{attempt}"
        if not inside(job_dir, self.outputs_root):
            raise OutputDeliveryError(f"output folder for user {user_id!r} job {job_id!r} would leave OUTPUTS_PATH")
        return job_dir

    async def deliver(
        self,
        history_outputs: dict[str, Any],
        user_id: str,
        job_id: str,
        *,
        attempt: int | None = None,
        written_since: float | None = None,
    ) -> list[DeliveredFile]:
        """Copy every result file into a staging folder, then rename it into place; on any failure (or
        cancellation) the staging folder goes, so a job that does not complete leaves nothing that looks like
        a result, and a worker killed midway leaves nothing outside OUTPUTS_PATH/.partial/. written_since: when
        the prompt was sent (time.time()); a file in COMFYUI_OUTPUT_DIR older than that is fetched over /view."""
        job_dir = self.job_dir(user_id, job_id, attempt)
        self._replays = set()
        self._progressed()
        items = result_files(history_outputs, limits=self.limits)
        if not items:  # previews only: no folder, as no result
            return []
        staging = await asyncio.to_thread(self._new_staging, user_id, job_id)
        delivered: list[DeliveredFile] = []
        try:
            async with _kept_fresh(staging):
                for item in items:
                    allowance = self.limits.bytes - sum(file.bytes for file in delivered)
                    delivered.append(await self._deliver_one(item, staging, job_dir, allowance, written_since))
            await self._rename_into_place(staging, job_dir, user_id, delivered)
            self._progressed()
        except BaseException:
            await _in_thread(shutil.rmtree, staging, True)
            raise
        return delivered

    async def _rename_into_place(
        self, staging: Path, job_dir: Path, user_id: str, delivered: list[DeliveredFile]
    ) -> None:
        """_publish in a thread, which a cancellation (the job taken away, a forced stop) cannot stop: once the
        rename is done, what it published is removed, for no report will name it."""
        publication = _Publication(delivered)
        publish = asyncio.ensure_future(
            asyncio.to_thread(_publish, staging, job_dir, self.outputs_root / user_id, publication)
        )
        try:
            await asyncio.shield(publish)
        except asyncio.CancelledError:
            self._unclaimed.append(publication)
            with contextlib.suppress(Exception):  # a rename that failed published nothing
                await publish
                await asyncio.to_thread(self.remove, delivered)
            self._unclaimed.remove(publication)
            raise

    def withdraw_unclaimed(self) -> None:
        """Before the process exits without the threads of cancelled deliveries: stop each that has not renamed
        its folder into place from doing so, and remove what the others published. Blocks while a rename is
        under way: the caller bounds the wait."""
        for publication in list(self._unclaimed):
            with publication.lock:
                publication.withdrawn = True
            if publication.renamed:
                left = self.remove(publication.delivered)
                log.warning("Removed the outputs a stopped delivery had published: its job was handed back",
                            files=len(publication.delivered) - left, left_in_place=left)

    def _progressed(self) -> None:
        self.progressed_at = time.monotonic()

    def _new_staging(self, user_id: str, job_id: str) -> Path:
        folder = self.outputs_root / STAGING_FOLDER
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staging = folder / f"{user_id}.{job_id}.{uuid.uuid4().hex}"
            staging.mkdir()  # not mkdtemp's 0700: renamed to the job's folder, it has the umask's mode
            return staging
        except OSError as exc:
            problem = f"could not make a staging folder in {folder}: {type(exc).__name__}: {exc}"
            if exc.errno in OUR_DISK_ERRORS or isinstance(exc, PermissionError):
                raise OutputsDiskFailed(problem) from exc
            raise OutputDeliveryError(problem) from exc

    async def _deliver_one(
        self, item: OutputFile, staging: Path, job_dir: Path, allowance: int, written_since: float | None
    ) -> DeliveredFile:
        """One file into the staging folder; OutputsTooLarge before more than `allowance` bytes are written."""
        relative = relative_output_path(item.subfolder, item.filename)
        if ATTEMPT_FOLDER.fullmatch(relative.parts[0]):
            raise OutputDeliveryError(
                f"output {_shown(str(relative))!r}: a first folder named @attempt-<number> is the worker's, for the "
                "retries of a job; choose another filename_prefix"
            )
        target = staging / relative
        if not inside(target, staging):
            raise OutputDeliveryError(f"output {relative} would leave the job's folder")
        try:
            size, digest = await self._copy(item, relative, target, allowance, written_since)
        except _OverAllowance:
            raise self.limits.too_many_bytes(relative) from None
        except (OSError, ComfyUIUnavailable, FileNotServed, _SourceChanged, _SourceTooSlow) as exc:
            problem = f"could not deliver output {relative} of node {item.node_id}: {type(exc).__name__}: {exc}"
            if isinstance(exc, ComfyUIUnavailable):
                raise ComfyUILostDuringDelivery(problem) from exc
            if isinstance(exc, _SourceTooSlow):
                raise ComfyUIFolderTooSlow(problem) from exc
            if isinstance(exc, OSError) and exc.errno in OUR_DISK_ERRORS:
                raise OutputsDiskFailed(problem) from exc
            raise OutputDeliveryError(problem) from exc
        final = (job_dir / relative).relative_to(self.outputs_root).as_posix()
        return DeliveredFile(item.node_id, item.kind, final, size, digest)

    def take_replays(self) -> frozenset[PurePosixPath]:
        """The latest delivery's result files found in COMFYUI_OUTPUT_DIR older than their prompt, with the bytes
        ComfyUI served: replays of its cache, ComfyUI's own files. Said once."""
        replays, self._replays = frozenset(self._replays), set()
        return replays

    def sweep_due(self) -> bool:
        """Whether remove_abandoned() should run: at start, then every STALE_STAGING_S, so a worker that lives
        for days still removes what a replica killed just before its own start left; SWEEP_RESUME_S after a
        sweep that ran out of its budget."""
        return time.monotonic() >= self._next_sweep_at

    def remove_abandoned(
        self, budget_s: float = REMOVAL_BUDGET_S, stopping: Callable[[], bool] = lambda: False
    ) -> SweptStaging:
        """Remove what workers killed mid-delivery left in OUTPUTS_PATH/.partial/ (one log line if any), starting
        no new entry after budget_s or once ``stopping()`` is true: the rest waits for the next sweep, SWEEP_RESUME_S
        later."""
        swept = remove_abandoned_deliveries(self.outputs_root, budget_s=budget_s, stopping=stopping)
        self._next_sweep_at = time.monotonic() + (SWEEP_RESUME_S if swept.left else STALE_STAGING_S)
        if swept.folders or swept.errors or swept.left:
            report = log.warning if swept.errors else log.info
            report(
                "Removed abandoned partial deliveries", folders=swept.folders, bytes=swept.bytes,
                in_progress=swept.kept, not_removed=len(swept.errors), first_error=next(iter(swept.errors), None),
                left_for_next_sweep=swept.left, next_sweep_in_s=SWEEP_RESUME_S if swept.left else STALE_STAGING_S,
                staging=str(self.outputs_root / STAGING_FOLDER), stale_after_s=STALE_STAGING_S,
            )  # fmt: skip
        return swept

    def remove_earlier_attempts(
        self, user_id: str, job_id: str, attempt: int | None, budget_s: float = REMOVAL_BUDGET_S,
        stopping: Callable[[], bool] = lambda: False,
    ) -> int:
        """At the start of attempt N (N >= 2): remove what earlier attempts left in OUTPUTS_PATH/<user>/<job>/
        (their files, @attempt-K/ for K < N), and say how many entries went. The queue manager fenced those
        attempts off when it handed the job out again, so none of their files can become a result; a worker
        killed after publishing its delivery and before its report landed left them for ever. Never @attempt-M/
        for M >= N: a later attempt's, should this one be late itself. Best effort: a failure is logged."""
        if attempt is None or attempt < 2:
            return 0
        stop_at = time.monotonic() + budget_s
        try:
            entries = list(os.scandir(self.job_dir(user_id, job_id)))
        except (OSError, OutputDeliveryError):  # no earlier delivery (the usual case), or an unreadable folder
            return 0
        removed = 0
        left = 0
        for done, entry in enumerate(entries):
            if done and _out_of_time(stop_at, stopping):  # a slow volume: the job waits no longer for them
                left = len(entries) - done
                break
            later = ATTEMPT_FOLDER.fullmatch(entry.name)
            if later and int(later.group(1)) >= attempt and entry.is_dir(follow_symlinks=False):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError as exc:
                log.warning("Could not remove a file of an earlier attempt", path=entry.path, error=str(exc))
                continue
            removed += 1
        if removed or left:
            report = log.warning if left else log.info
            report("Removed the files of earlier attempts of the job", entries=removed, attempt=attempt,
                   left_in_place=left, budget_s=budget_s)
        return removed

    def remove(
        self, files: list[DeliveredFile], budget_s: float = math.inf, stopping: Callable[[], bool] = lambda: False
    ) -> int:
        """Delete delivered files and the folders they leave empty, up to OUTPUTS_PATH/<user>; never outside.
        No file is started after budget_s or once ``stopping()`` is true (one always is): how many were left in
        place."""
        root = self.outputs_root.resolve()
        stop_at = time.monotonic() + budget_s
        for done, file in enumerate(files):
            if done and _out_of_time(stop_at, stopping):
                return len(files) - done
            path = (self.outputs_root / file.path).resolve()
            if not path.is_relative_to(root):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            remove_empty_parents(path.parent, keep=root / path.relative_to(root).parts[0])  # OUTPUTS_PATH/<user>
        return 0

    async def _copy(
        self, item: OutputFile, relative: PurePosixPath, target: Path, allowance: int, written_since: float | None
    ) -> tuple[int, str]:
        local, older = self._local_source(relative, written_since)
        if local is not None:
            assert self.comfyui_output_dir is not None
            try:
                return await _copy_in_thread(
                    local, target, allowance, self.comfyui_output_dir, self._progressed, self.comfy.timeout_s
                )
            except _Unreadable:  # ComfyUI, another uid, wrote it for itself alone: its /view serves it
                await self._say_unreadable(local, relative)
        out = await self._fetch(item, target, allowance)
        if older is not None:
            await asyncio.to_thread(self._compare_older, older, relative, out.size, out.sha256)
        return out.size, out.sha256

    async def _fetch(self, item: OutputFile, target: Path, allowance: int) -> _HashingFile:
        """Over /view, written in threads a MiB at a time: a volume hung inside a write holds this delivery, never
        the event loop, on which the health server answers and the job's lease is renewed."""
        out = await _in_thread(_open_staged, target, allowance, self._progressed)
        try:
            received = bytearray()
            async for chunk in self.comfy.download(item.filename, item.subfolder, "output"):
                if out.size + len(received) + len(chunk) > allowance:
                    raise _OverAllowance
                received += chunk
                if len(received) >= CHUNK:
                    await _in_thread(out.write, received)
                    received = bytearray()
            await _in_thread(out.write, received)
            await _in_thread(out.sync)
        finally:
            await _in_thread(out.close)
        return out

    def _local_source(self, relative: PurePosixPath, written_since: float | None) -> tuple[Path | None, Path | None]:
        """(the file in COMFYUI_OUTPUT_DIR to copy, None); (None, a file of that name older than the prompt); or
        (None, None), to fetch the result over /view."""
        if self.comfyui_output_dir is None:
            return None, None
        source = self.comfyui_output_dir / relative
        if not inside(source, self.comfyui_output_dir):
            # ComfyUI's /view would follow the same link: fetching it there instead is no way round.
            raise OutputDeliveryError(f"output {relative} is a symbolic link leading out of ComfyUI's output folder")
        with contextlib.suppress(OSError):
            info = source.stat()  # the one stat is_file() made before: the check costs no system call
            if not stat.S_ISREG(info.st_mode):
                pass
            elif written_since is None or info.st_mtime >= written_since - MTIME_SLACK_S:
                return source, None
            else:  # written before the prompt: a replay of ComfyUI's cache, or another folder's file of that name
                return None, source
        if not self._fetched_over_view:
            self._fetched_over_view = True
            log.info("Output not in the local ComfyUI output folder; fetching it over /view (said once per worker)",
                     file=str(relative), COMFYUI_OUTPUT_DIR=str(self.comfyui_output_dir))  # fmt: skip
        return None, None

    async def _say_unreadable(self, source: Path, relative: PurePosixPath) -> None:
        if not self._said_unreadable:
            self._said_unreadable = True
            owner = await asyncio.to_thread(_ownership, source)
            log.warning("A result file in COMFYUI_OUTPUT_DIR is not readable by the worker: such results are fetched "
                        "over /view (said once per worker); let the worker's uid read ComfyUI's files",
                        COMFYUI_OUTPUT_DIR=str(self.comfyui_output_dir), file=str(relative), owner=owner)  # fmt: skip

    def _compare_older(self, older: Path, relative: PurePosixPath, size: int, sha256: str) -> None:
        """A file of a result's name, older than its prompt, in COMFYUI_OUTPUT_DIR. The bytes ComfyUI served: a
        result its cache replayed. Other bytes: the folder is not where this ComfyUI writes (last week's files, an
        old copy, another ComfyUI's), so no file there is this worker's to delete (found_look_alikes)."""
        try:
            with _open_result(older) as file:
                same_size = os.fstat(file.fileno()).st_size == size
                if same_size and hashlib.file_digest(file, "sha256").hexdigest() == sha256:
                    self._replays.add(relative)
                    return
        except (OSError, OutputDeliveryError):  # gone, unreadable or no file: nothing tells the folder is wrong
            return
        if not self.found_look_alikes:
            self.found_look_alikes = True
            log.warning("COMFYUI_OUTPUT_DIR holds files of the same names as ComfyUI's results, written before "
                        "them and with other bytes: it is not ComfyUI's output folder; results are fetched over "
                        "/view and nothing there is deleted", COMFYUI_OUTPUT_DIR=str(self.comfyui_output_dir),
                        file=str(relative))  # fmt: skip


PROC_FDS = Path("/proc/self/fd")  # where an open file's real path is read (Linux)


class _OverAllowance(Exception):
    """More bytes than the job's outputs may still take: nothing past the allowance was written."""


class _HashingFile:
    def __init__(self, raw: BinaryIO, allowance: int, on_progress: Callable[[], None]) -> None:
        self._raw = raw
        self._on_progress = on_progress
        self._digest = hashlib.sha256()
        self.size = 0
        self.allowance = allowance
        self._unsynced = 0

    def __enter__(self) -> _HashingFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._raw.close()

    def write(self, chunk: bytes | bytearray) -> None:
        if self.size + len(chunk) > self.allowance:
            raise _OverAllowance
        self._raw.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)
        self._unsynced += len(chunk)
        self._on_progress()
        if self._unsynced >= SYNC_EVERY_BYTES:
            self.sync()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def sync(self) -> None:
        """On disk before the job is reported: a power loss after the report must not leave it empty or short."""
        self._raw.flush()
        sync(self._raw.fileno())
        self._unsynced = 0
        self._on_progress()


def _open_staged(target: Path, allowance: int, on_progress: Callable[[], None]) -> _HashingFile:
    """The target, in the delivery's staging folder: no reader sees it before the whole folder is published.
    ``on_progress`` is called after each chunk written and once the file is on disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return _HashingFile(target.open("wb"), allowance, on_progress)


@dataclass(eq=False)
class _Publication:
    """One delivery's rename into place: done under ``lock``, and never once ``withdrawn``."""

    delivered: list[DeliveredFile]
    lock: threading.Lock = field(default_factory=threading.Lock)
    withdrawn: bool = False
    renamed: bool = False


def _publish(staging: Path, job_dir: Path, user_dir: Path, publication: _Publication) -> None:
    """Rename the complete staging folder to the job's folder: one step, so readers see all of it or nothing;
    on disk, folders and all, before the job is reported. A withdrawn publication leaves the staging folder."""
    job_folder = job_dir.parent if job_dir.parent != user_dir else None  # <job>/ of an @attempt-N/ folder
    made_job_folder = job_folder is not None and not job_folder.exists()
    try:
        for folder, _, _ in os.walk(staging):  # the staging folder's own entries, before it is published
            sync_folder(Path(folder))
        with publication.lock:
            if publication.withdrawn:
                return
            _rename_into_place(staging, job_dir)
            publication.renamed = True
        for folder in (job_dir.parent, *job_dir.parent.parents):  # the rename, and any folder made for it
            sync_folder(folder)
            if folder == user_dir.parent:
                break
    except OSError as exc:
        if made_job_folder:  # OUTPUTS_PATH/<user> stays: other jobs of the user share it
            with contextlib.suppress(OSError):
                job_dir.parent.rmdir()
        problem = f"could not move the delivered files into {job_dir}: {type(exc).__name__}: {exc}"
        if exc.errno in OUR_DISK_ERRORS:
            raise OutputsDiskFailed(problem) from exc
        if isinstance(exc, PermissionError):
            raise OutputsFolderRefused(f"{problem}; {_ownership(job_dir.parent)}") from exc
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            problem = f"{job_dir} already holds files of another delivery of the same job and attempt"
        if exc.errno == errno.EXDEV:
            problem = (f"{job_dir.parent} is on another file system than {staging.parent}, so the delivery cannot "
                       "be renamed into place: mount OUTPUTS_PATH as one volume, with nothing mounted inside it")
        raise OutputDeliveryError(problem) from exc


def _ownership(folder: Path) -> str:
    """Who owns the nearest existing folder of ``folder``, and who this worker is: what a refusal comes down to."""
    for existing in (folder, *folder.parents):
        try:
            info = existing.stat()
        except OSError:
            continue
        return (f"{existing} belongs to uid {info.st_uid} gid {info.st_gid} with mode {stat.filemode(info.st_mode)}; "
                f"this worker runs as uid {os.geteuid()} gid {os.getegid()}")
    return f"this worker runs as uid {os.geteuid()} gid {os.getegid()}"


# The queue manager's retention removes a user's folder once its last old job's folder is gone: between our
# mkdir and our rename. Made again, the rename goes through.
RENAME_TRIES = 3


def _rename_into_place(staging: Path, job_dir: Path) -> None:
    for tries_left in range(RENAME_TRIES - 1, -1, -1):
        job_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, job_dir)
            return
        except FileNotFoundError:
            if tries_left == 0 or not staging.is_dir():
                raise


@contextlib.asynccontextmanager
async def _kept_fresh(staging: Path) -> AsyncIterator[None]:
    """Touch the staging folder every STAGING_TOUCH_S while the delivery runs: a live writer's folder is never
    STALE_STAGING_S old, however long one file takes."""

    async def touch() -> None:
        while True:
            await asyncio.sleep(STAGING_TOUCH_S)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.utime, staging)

    toucher = asyncio.create_task(touch())
    try:
        yield
    finally:
        toucher.cancel()


class _CopyCancelled(Exception):
    pass


class _Unreadable(PermissionError):
    """A result file in COMFYUI_OUTPUT_DIR refused this worker (EACCES, EPERM): it is fetched over /view instead."""


class _SourceChanged(Exception):
    """The file changed size while it was copied: something is still writing it."""


class _SourceTooSlow(Exception):
    """Less than VIEW_PIECE_BYTES of the file, and not the rest of it, came within the HTTP timeout."""


class _SourceClock:
    """The waits for COMFYUI_OUTPUT_DIR, counted as download() counts ComfyUI's: each VIEW_PIECE_BYTES of a file
    (or the rest of it) within ``piece_s``. Told once a read returns: one that never does is DELIVERY_STALL_S's."""

    def __init__(self, piece_s: float) -> None:
        self.piece_s = piece_s
        self._waited_s = 0.0
        self._piece = 0

    def timed(self, call: Callable[..., T], *args: Any) -> T:
        started = time.monotonic()
        try:
            return call(*args)
        finally:
            self._waited_s += time.monotonic() - started

    def came(self, size: int) -> None:
        if self._waited_s > self.piece_s:
            raise _SourceTooSlow(f"less than {VIEW_PIECE_BYTES >> 20} MiB, and not the whole file, came from "
                                 f"COMFYUI_OUTPUT_DIR within {self.piece_s:g} s (HTTP_TIMEOUT_S)")
        self._piece += size
        if self._piece >= VIEW_PIECE_BYTES:
            self._waited_s, self._piece = 0.0, 0


async def _copy_in_thread(
    source: Path, target: Path, allowance: int, root: Path, on_progress: Callable[[], None], piece_s: float
) -> tuple[int, str]:
    """The copy runs in a thread; on cancellation it is told to stop after the chunk it is writing."""
    stop = threading.Event()
    return await _in_thread(_copy_file, source, target, stop, allowance, root, on_progress, piece_s, on_cancel=stop.set)


async def _in_thread(function: Callable[..., T], *args: Any, on_cancel: Callable[[], None] = lambda: None) -> T:
    """``function`` in a thread, which a cancelled task cannot stop: on cancellation (after ``on_cancel``) it is
    awaited, so it writes nothing more once the staging folder is removed."""
    running = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        on_cancel()
        with contextlib.suppress(Exception):  # stopped, failed or done: the cancellation is what goes on
            await running
        raise


def _copy_file(
    source: Path, target: Path, stop: threading.Event, allowance: int, root: Path, on_progress: Callable[[], None],
    piece_s: float,
) -> tuple[int, str]:
    """The file as it was when opened, or _SourceChanged: a file still being written is not a result, and one
    that grows for ever would hold the job for ever. _OverAllowance before a byte of a file too large is copied.
    OutputDeliveryError when what was opened lies outside ``root``: ComfyUI's custom nodes may swap the file, or
    a folder above it, for a link after _local_source checked it (to /proc/self/environ, which the worker reads
    and ComfyUI may not), and only the open file tells where it is. _SourceTooSlow past ``piece_s`` (_SourceClock)."""
    clock = _SourceClock(piece_s)
    with _open_staged(target, allowance, on_progress) as out, clock.timed(_open_result, source) as src:
        opened = Path(os.readlink(f"/proc/self/fd/{src.fileno()}")) if PROC_FDS.is_dir() else source.resolve()
        if not opened.is_relative_to(root.resolve()):
            raise OutputDeliveryError(f"output {source.name} leads out of ComfyUI's output folder")
        size = os.fstat(src.fileno()).st_size
        if size > allowance:
            raise _OverAllowance
        while out.size < size and (chunk := clock.timed(src.read, min(CHUNK, size - out.size))):
            if stop.is_set():
                raise _CopyCancelled
            clock.came(len(chunk))
            out.write(chunk)
        if out.size != size or src.read(1):
            raise _SourceChanged(f"{size} bytes when opened, then changed while copied: a node is still writing it")
        out.sync()
    return out.size, out.sha256


def _open_result(source: Path) -> BinaryIO:
    """A result file in COMFYUI_OUTPUT_DIR, opened without waiting: a custom node may swap it for a FIFO or a device
    after _local_source's stat, and a FIFO's open() waits for a writer for ever. OutputDeliveryError unless what
    was opened is a regular file; _Unreadable when this worker may not read it."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except PermissionError as exc:
        raise _Unreadable(exc.errno, exc.strerror, str(source)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OutputDeliveryError(
                f"output {source.name} is not a regular file ({stat.filemode(mode)}) in ComfyUI's output folder"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class SweptStaging:
    folders: int = 0
    bytes: int = 0
    kept: int = 0  # folders of deliveries still in progress (touched within STALE_STAGING_S)
    left: int = 0  # entries not looked at: the budget ran out
    errors: list[str] = field(default_factory=list)


def remove_abandoned_deliveries(
    outputs_root: Path, stale_after_s: float | None = None, budget_s: float = math.inf,
    stopping: Callable[[], bool] = lambda: False,
) -> SweptStaging:
    """Remove the staging folders under OUTPUTS_PATH/.partial/ that nothing touched for stale_after_s: those of
    workers killed mid-delivery. Age is read against the volume's own clock (the mtime of a folder made now),
    so a replica whose clock is off cannot take another's live delivery for an abandoned one. No entry is
    started after budget_s or once ``stopping()`` is true, but one always is: what is left is counted in ``left``."""
    stop_at = time.monotonic() + budget_s
    swept = SweptStaging()
    stale_after_s = STALE_STAGING_S if stale_after_s is None else stale_after_s
    staging_root = outputs_root / STAGING_FOLDER
    try:
        if not stat.S_ISDIR(staging_root.lstat().st_mode):  # a link is not followed
            return swept
        probe = Path(tempfile.mkdtemp(dir=staging_root, prefix="clock."))
        now = probe.stat().st_mtime
        probe.rmdir()
        entries = list(os.scandir(staging_root))
    except FileNotFoundError:  # no delivery was ever made here
        return swept
    except OSError as exc:
        swept.errors.append(f"{staging_root}: {exc.strerror or type(exc).__name__}")
        return swept
    for done, entry in enumerate(entries):
        if done and _out_of_time(stop_at, stopping):
            swept.left = len(entries) - done
            break
        try:
            newest, size = _newest_change(Path(entry.path))
            if now - newest < stale_after_s:
                swept.kept += 1
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            swept.errors.append(f"{entry.path}: {exc.strerror or type(exc).__name__}")
            continue
        swept.folders += 1
        swept.bytes += size
    return swept


def _out_of_time(stop_at: float, stopping: Callable[[], bool]) -> bool:
    """A removal's budget is spent (time.monotonic() past ``stop_at``) or the worker is stopping."""
    return time.monotonic() >= stop_at or stopping()


def _newest_change(path: Path) -> tuple[float, int]:
    """The latest mtime of path and of everything under it, and their bytes; no symbolic link is followed."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        return info.st_mtime, info.st_size
    newest, size = info.st_mtime, 0
    for folder, subfolders, files in os.walk(path):
        for name in subfolders:
            newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
        for name in files:
            child = os.lstat(os.path.join(folder, name))
            newest, size = max(newest, child.st_mtime), size + child.st_size
    return newest, size
