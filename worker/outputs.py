"""Copy a prompt's result files into OUTPUTS_PATH/<user_id>/<job_id>/, atomically, never outside the root."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import structlog

from worker.comfyui import ComfyUIClient, ComfyUIUnavailable

log = structlog.get_logger()
CHUNK = 1 << 20


class OutputDeliveryError(Exception):
    pass


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


def result_files(history_outputs: dict[str, Any]) -> list[OutputFile]:
    """Every list entry of type 'output' with a filename; 'temp' previews are not results."""
    files = []
    for node_id, node_output in history_outputs.items():
        if not isinstance(node_output, dict):
            continue
        for kind, entries in node_output.items():
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if isinstance(entry, dict) and entry.get("type") == "output" and entry.get("filename"):
                    subfolder = str(entry.get("subfolder") or "")
                    files.append(OutputFile(str(node_id), kind, str(entry["filename"]), subfolder))
    return files


def relative_output_path(subfolder: str, filename: str) -> PurePosixPath:
    """subfolder/filename as ComfyUI named them, refused if it could climb out of a directory."""
    relative = PurePosixPath(subfolder.replace("\\", "/")) / filename.replace("\\", "/")
    if relative.is_absolute() or any(part in ("..", "") for part in relative.parts) or "\0" in str(relative):
        raise OutputDeliveryError(f"unsafe output path from ComfyUI: subfolder={subfolder!r} filename={filename!r}")
    return relative


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


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
        if not _inside(job_dir, self.outputs_root):
            raise OutputDeliveryError(f"output folder for user {user_id!r} job {job_id!r} would leave OUTPUTS_PATH")
        return job_dir

    async def deliver(
        self, history_outputs: dict[str, Any], user_id: str, job_id: str, *, attempt: int | None = None
    ) -> list[DeliveredFile]:
        """Copy every result file; on any failure (or cancellation) the files already copied are removed, so
        a job that does not complete leaves nothing that looks like a result."""
        job_dir = self.job_dir(user_id, job_id, attempt)
        delivered: list[DeliveredFile] = []
        try:
            for item in result_files(history_outputs):
                delivered.append(await self._deliver_one(item, job_dir))
        except BaseException:
            self.remove(delivered)
            raise
        return delivered

    async def _deliver_one(self, item: OutputFile, job_dir: Path) -> DeliveredFile:
        relative = relative_output_path(item.subfolder, item.filename)
        target = job_dir / relative
        if not _inside(target, job_dir):
            raise OutputDeliveryError(f"output {relative} would leave the job's folder")
        try:
            size, digest = await self._copy(item, relative, target)
        except (OSError, ComfyUIUnavailable) as exc:
            raise OutputDeliveryError(
                f"could not deliver output {relative} of node {item.node_id}: {type(exc).__name__}: {exc}"
            ) from exc
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
            folder = path.parent
            while folder != root and folder.parent != root:
                try:
                    folder.rmdir()
                except OSError:  # not empty, or already gone
                    break
                folder = folder.parent

    async def _copy(self, item: OutputFile, relative: PurePosixPath, target: Path) -> tuple[int, str]:
        local = self._local_source(relative)
        if local is not None:
            return await asyncio.to_thread(_copy_file, local, target)
        with _atomic_file(target) as out:
            async for chunk in self.comfy.download(item.filename, item.subfolder, "output"):
                out.write(chunk)
        return out.size, out.sha256

    def _local_source(self, relative: PurePosixPath) -> Path | None:
        if self.comfyui_output_dir is None:
            return None
        source = self.comfyui_output_dir / relative
        if _inside(source, self.comfyui_output_dir) and source.is_file():
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


def _copy_file(source: Path, target: Path) -> tuple[int, str]:
    with _atomic_file(target) as out, source.open("rb") as src:
        while chunk := src.read(CHUNK):
            out.write(chunk)
    return out.size, out.sha256
