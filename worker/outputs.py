"""Copy a prompt's result files into OUTPUTS_PATH/<user_id>/<job_id>/, atomically, never outside the root."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import structlog

from common.text import encodes_as_utf8
from worker.comfyui import ComfyUIClient, ComfyUIUnavailable, FileNotServed

log = structlog.get_logger()
CHUNK = 1 << 20
# Errors of the disk OUTPUTS_PATH is on, not of the job: full, over quota, read-only, failing.
OUR_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class OutputDeliveryError(Exception):
    """The job's outputs cannot be delivered because of the job (an unsafe path, a file ComfyUI will not serve)."""


class ComfyUILostDuringDelivery(OutputDeliveryError):
    """Not the job's fault: ComfyUI stopped answering while its files were fetched over /view."""


class OutputsDiskFailed(OutputDeliveryError):
    """Not the job's fault: the disk under OUTPUTS_PATH refused the write (full, over quota, read-only, failing)."""


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


def result_files(history_outputs: dict[str, Any], folder_type: str = "output") -> list[OutputFile]:
    """Every list entry of that type with a filename: 'output' are the results; 'temp' (previews) are not."""
    files = []
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
    return files


def relative_output_path(subfolder: str, filename: str) -> PurePosixPath:
    """subfolder/filename as ComfyUI named them, refused if it could climb out of a directory."""
    relative = PurePosixPath(subfolder.replace("\\", "/")) / filename.replace("\\", "/")
    if relative.is_absolute() or any(part in ("..", "") for part in relative.parts) or "\0" in str(relative):
        raise OutputDeliveryError(f"unsafe output path from ComfyUI: subfolder={subfolder!r} filename={filename!r}")
    if not encodes_as_utf8(str(relative)):  # a lone surrogate from ComfyUI's JSON: no file name, nor reportable
        raise OutputDeliveryError(f"output path from ComfyUI is not valid UTF-8: {str(relative)!a}")
    return relative


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _missing_folders(folder: Path, below: Path) -> list[Path]:
    """folder and those of its ancestors under `below` that do not exist yet."""
    missing = []
    while folder != below and folder.is_relative_to(below) and not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_parents(folder: Path, keep: Path) -> None:
    """folder and its parents, while they are empty, up to ``keep``: never ``keep`` itself or anything outside it."""
    while folder != keep and folder.is_relative_to(keep):
        try:
            folder.rmdir()
        except OSError:  # not empty, gone, or a link
            return
        folder = folder.parent


def _remove_empty_folders(folders: set[Path]) -> None:
    """rmdir, deepest first: a folder that holds anything stays."""
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty, or never made
            folder.rmdir()


class OutputDelivery:
    def __init__(self, outputs_root: Path, comfy: ComfyUIClient, comfyui_output_dir: Path | None = None) -> None:
        self.outputs_root = outputs_root
        self.comfy = comfy
        self.comfyui_output_dir = comfyui_output_dir

    def job_dir(self, user_id: str, job_id: str, attempt: int | None = None) -> Path:
        """OUTPUTS_PATH/<user>/<job>/, and its attempt-N/ subfolder for a retry of the same job id (N >= 2), so
        a late earlier attempt can never overwrite, or remove, the files of the one that counts."""
        job_dir = self.outputs_root / user_id / job_id
        if attempt is not None and attempt > 1:
            job_dir = job_dir / f"attempt-{attempt}"
        if not inside(job_dir, self.outputs_root):
            raise OutputDeliveryError(f"output folder for user {user_id!r} job {job_id!r} would leave OUTPUTS_PATH")
        return job_dir

    async def deliver(
        self, history_outputs: dict[str, Any], user_id: str, job_id: str, *, attempt: int | None = None
    ) -> list[DeliveredFile]:
        """Copy every result file; on any failure (or cancellation) the files already copied are removed, so
        a job that does not complete leaves nothing that looks like a result."""
        job_dir = self.job_dir(user_id, job_id, attempt)
        delivered: list[DeliveredFile] = []
        # The folders this delivery creates, removed again if a failure leaves them empty. OUTPUTS_PATH/<user> is
        # kept, as remove() keeps it: other jobs of the same user are written there at the same time.
        made = set(_missing_folders(job_dir, below=self.outputs_root / user_id))
        try:
            for item in result_files(history_outputs):
                delivered.append(await self._deliver_one(item, job_dir, made))
        except BaseException:
            self.remove(delivered)
            _remove_empty_folders(made)
            raise
        return delivered

    async def _deliver_one(self, item: OutputFile, job_dir: Path, made: set[Path]) -> DeliveredFile:
        relative = relative_output_path(item.subfolder, item.filename)
        target = job_dir / relative
        if not inside(target, job_dir):
            raise OutputDeliveryError(f"output {relative} would leave the job's folder")
        made.update(_missing_folders(target.parent, below=job_dir))
        try:
            size, digest = await self._copy(item, relative, target)
        except (OSError, ComfyUIUnavailable, FileNotServed, _SourceChanged) as exc:
            problem = f"could not deliver output {relative} of node {item.node_id}: {type(exc).__name__}: {exc}"
            if isinstance(exc, ComfyUIUnavailable):
                raise ComfyUILostDuringDelivery(problem) from exc
            if isinstance(exc, OSError) and exc.errno in OUR_DISK_ERRORS:
                raise OutputsDiskFailed(problem) from exc
            raise OutputDeliveryError(problem) from exc
        return DeliveredFile(item.node_id, item.kind, target.relative_to(self.outputs_root).as_posix(), size, digest)

    def remove(self, files: list[DeliveredFile]) -> None:
        """Delete delivered files and the folders they leave empty, up to OUTPUTS_PATH/<user>; never outside."""
        root = self.outputs_root.resolve()
        for file in files:
            path = (self.outputs_root / file.path).resolve()
            if not path.is_relative_to(root):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            remove_empty_parents(path.parent, keep=root / path.relative_to(root).parts[0])  # OUTPUTS_PATH/<user>

    async def _copy(self, item: OutputFile, relative: PurePosixPath, target: Path) -> tuple[int, str]:
        local = self._local_source(relative)
        if local is not None:
            return await _copy_in_thread(local, target)
        with _atomic_file(target) as out:
            async for chunk in self.comfy.download(item.filename, item.subfolder, "output"):
                out.write(chunk)
        return out.size, out.sha256

    def _local_source(self, relative: PurePosixPath) -> Path | None:
        if self.comfyui_output_dir is None:
            return None
        source = self.comfyui_output_dir / relative
        if not inside(source, self.comfyui_output_dir):
            # ComfyUI's /view would follow the same link: fetching it there instead is no way round.
            raise OutputDeliveryError(f"output {relative} is a symbolic link leading out of ComfyUI's output folder")
        if source.is_file():
            return source
        log.info("Output not in the local ComfyUI output folder; fetching it over /view", file=str(relative))
        return None


class _HashingFile:
    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._raw.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[_HashingFile]:
    """A temp file beside the target, renamed over it only once complete: readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw:
            yield _HashingFile(raw)
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise


class _CopyCancelled(Exception):
    pass


class _SourceChanged(Exception):
    """The file changed size while it was copied: something is still writing it."""


async def _copy_in_thread(source: Path, target: Path) -> tuple[int, str]:
    """The copy runs in a thread, which a cancelled task cannot stop: on cancellation it is told to stop and
    awaited (one chunk at most), so it leaves no file behind a job handed back or abandoned."""
    stop = threading.Event()
    copy = asyncio.ensure_future(asyncio.to_thread(_copy_file, source, target, stop))
    try:
        return await asyncio.shield(copy)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):  # stopped, failed or done: the cancellation is what goes on
            await copy
            await asyncio.to_thread(target.unlink)  # it had finished just as it was cancelled
        raise


def _copy_file(source: Path, target: Path, stop: threading.Event) -> tuple[int, str]:
    """The file as it was when opened, or _SourceChanged: a file still being written is not a result, and one
    that grows for ever would hold the job for ever."""
    with _atomic_file(target) as out, source.open("rb") as src:
        size = os.fstat(src.fileno()).st_size
        while out.size < size and (chunk := src.read(min(CHUNK, size - out.size))):
            if stop.is_set():
                raise _CopyCancelled
            out.write(chunk)
        if out.size != size or src.read(1):
            raise _SourceChanged(f"{size} bytes when opened, then changed while copied: a node is still writing it")
    return out.size, out.sha256
