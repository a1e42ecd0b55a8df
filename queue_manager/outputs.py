"""A completed job's result files, served from QUEUE_MANAGER_OUTPUTS_DIR: the folder where the workers' OUTPUTS_PATH
volume is mounted on the queue manager's host.

A path is served only when it is one of those the job's own result lists (`result.outputs[].path`, relative to
OUTPUTS_PATH, as the worker wrote it), lies in the job's own folder `<user_id>/<job_id>/`, and is a regular file
reached from the folder without following a link: a link planted on the volume leads nowhere, and no other file
can be named. The file sent is the one opened then, even if its name is swapped for a link a moment later.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import stat
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import structlog
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from common.send_progress import drop

log = structlog.get_logger()

OUTPUTS_DIR_ENV = "QUEUE_MANAGER_OUTPUTS_DIR"
NOT_SERVED = (
    f"Job outputs are not served by this queue manager: its operator turns it on with {OUTPUTS_DIR_ENV} (the "
    "folder where the workers' OUTPUTS_PATH volume is mounted)"
)
NOT_LISTED = "Output not found: ask for one of the paths the job's result lists in outputs[].path, as listed"
# The kinds of files ComfyUI saves. Anything else is sent as application/octet-stream (a download): never as
# text/html or image/svg+xml, from which a browser would run script.
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".avif": "image/avif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".opus": "audio/opus",
}
DOWNLOAD_TYPE = "application/octet-stream"
EMPTY_SUFFIX = re.compile(r"bytes=-0+", re.ASCII | re.IGNORECASE)  # the last 0 bytes, as aiohttp reads a Range
SOME_SUFFIX = re.compile(r"bytes=-0*[1-9][0-9]*", re.ASCII | re.IGNORECASE)  # the last N > 0 bytes
# Each step opened without following a link (a link there fails, or is itself what is opened) and for the lookup
# only (O_PATH: no read permission needed, and no side effect: opening a device node can act on the device). Only a
# regular file is then opened for reading, through /proc/self/fd/N (that very inode), without waiting.
FOLDER_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOOKUP_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
PROC_FDS = "/proc/self/fd"  # the names of this process's open files: Linux, mounted in any container

# The queue manager's own trouble (out of descriptors or memory, a failing disk), not the client's: 503, not 404.
OUR_TROUBLE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EIO})


class OutputNotServed(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def outputs_dir_problem(folder: Path) -> str | None:
    """Why the queue manager cannot serve outputs from this folder, or None (checked once, at start)."""
    named = f"{OUTPUTS_DIR_ENV} (--outputs-dir) {folder}"
    try:
        is_folder = folder.is_dir()
    except OSError as exc:  # a name longer than the system takes (ENAMETOOLONG), say: not a traceback
        return f"{named} cannot be looked at ({exc.strerror or exc}): name the folder, or unset {OUTPUTS_DIR_ENV}"
    if not is_folder:
        return (f"{named} is not a folder: mount the workers' OUTPUTS_PATH volume there (read-write, for the "
                f"outputs' retention), or unset {OUTPUTS_DIR_ENV}")
    if not os.access(folder, os.R_OK | os.X_OK):
        return (f"{named} cannot be read by this user (uid {os.getuid()}): make it readable to the queue manager, "
                f"or unset {OUTPUTS_DIR_ENV}")
    if problem := _proc_fds_problem(folder):
        return (f"{named} cannot be served: every file is sent through {PROC_FDS}, which {problem}: mount /proc "
                f"(container runtimes do by default), or unset {OUTPUTS_DIR_ENV}")
    return None


def _proc_fds_problem(folder: Path) -> str | None:
    """Why PROC_FDS/N does not lead to the file this process opened as N, or None."""
    try:
        opened = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return f"could not be checked ({exc})"  # the folder, gone since it was checked
    try:
        seen, found = os.stat(f"{PROC_FDS}/{opened}"), os.fstat(opened)
    except OSError as exc:
        return f"does not lead to this process's open files ({exc.strerror}; is /proc mounted?)"
    finally:
        os.close(opened)
    if (seen.st_dev, seen.st_ino) != (found.st_dev, found.st_ino):
        return "leads to other files than this process's open ones (is /proc this container's own?)"
    return None


def listed_output(root: Path, user_id: str, job_id: str, listed: Collection[str], asked: str) -> io.FileIO:
    """The file `asked` names under `root`, opened for reading, if the job's result lists it (`listed`: its
    `outputs[].path`, JobStore.output_listing) and it is a regular file reached without following a link;
    OutputNotServed otherwise. Serve this very file (OutputFileResponse): its name may lead elsewhere a moment
    later. Touches the disk: run it in a thread."""
    if asked not in listed:
        raise OutputNotServed(404, NOT_LISTED)
    parts = asked.split("/")
    if len(parts) < 3 or parts[:2] != [user_id, job_id] or any(part in ("", ".", "..") for part in parts):
        raise _refused(job_id, asked, "the result lists a path outside the job's folder <user_id>/<job_id>/")
    try:
        folder = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        log.error("outputs_dir_missing", outputs_dir=str(root), job_id=job_id)
        raise OutputNotServed(503, "The queue manager's outputs folder is missing (its volume is not mounted?): tell "
                                   "the operator") from None
    try:
        for depth, name in enumerate(parts[:-1]):
            doing = f"searching {'/'.join(parts[:depth]) or 'the outputs folder'}"  # a lookup needs x on the folder
            inner = os.open(name, FOLDER_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
        name, doing = parts[-1], f"searching {'/'.join(parts[:-1])}"
        found = os.open(name, LOOKUP_FLAGS, dir_fd=folder)  # a link there is itself what is found
        try:
            checked = os.fstat(found)
            if not stat.S_ISREG(checked.st_mode):
                raise _refused(job_id, asked, _not_a_file_because(folder, name, checked))
            doing = f"reading {asked}"
            descriptor = os.open(f"{PROC_FDS}/{found}", READ_FLAGS)  # the file found, whatever its name leads to now
        finally:
            os.close(found)
    except FileNotFoundError:
        log.warning("output_gone", job_id=job_id, path=asked)
        raise OutputNotServed(404, f"Output {asked} is listed in the job's result but no longer on the volume "
                                   "(deleted from it by hand or by another tool)") from None
    except PermissionError as exc:
        log.error("output_unreadable", job_id=job_id, path=asked, error=f"{exc.strerror} {doing}")
        raise OutputNotServed(503, f"Output {asked} is listed in the job's result but cannot be read by the queue "
                                   "manager (file permissions on the outputs volume): tell the operator") from None
    except OSError as exc:  # a link on the way (O_NOFOLLOW), a file where a folder should be, a name too long
        if exc.errno in OUR_TROUBLE:
            log.error("output_open_failed", job_id=job_id, path=asked, error=f"{exc.strerror} {doing}")
            raise OutputNotServed(503, f"Output {asked} cannot be opened by the queue manager right now ("
                                       f"{os.strerror(exc.errno)}): try again later") from None
        raise _refused(job_id, asked, _not_opened_because(folder, name, exc)) from None
    finally:
        os.close(folder)
    sent = os.fstat(descriptor)
    if (sent.st_dev, sent.st_ino) != (checked.st_dev, checked.st_ino):
        os.close(descriptor)
        raise _refused(job_id, asked, f"{PROC_FDS} reopened another file than the one checked")
    return io.FileIO(descriptor, "rb")  # closed by OutputFileResponse, or when dropped


def _not_a_file_because(folder: int, name: str, found: os.stat_result) -> str:
    if not stat.S_ISLNK(found.st_mode):
        return "not a regular file"  # a folder, a FIFO, a device, a socket
    return _link_leading(folder, name) or "a symbolic link on the way"


def _not_opened_because(folder: int, name: str, exc: OSError) -> str:
    return _link_leading(folder, name) or f"cannot be opened: {exc}"


def _link_leading(folder: int, name: str) -> str | None:
    """Where `name` in `folder` leads, said, if it is a symbolic link whose target can be read."""
    try:
        return f"a symbolic link on the way leads to {os.readlink(name, dir_fd=folder)}"
    except OSError:
        return None


def _refused(job_id: str, asked: str, reason: str) -> OutputNotServed:
    """A listed path that is not served: the client hears only that it is not an output; the log says why."""
    log.warning("output_refused", job_id=job_id, path=asked, reason=reason)
    return OutputNotServed(404, NOT_LISTED)


def download_headers(name: str) -> dict[str, str]:
    """What makes a browser show an image or a video and never run an output: HTML or SVG included."""
    fallback = "".join(char if 0x20 <= ord(char) < 0x7F and char not in '"\\' else "_" for char in name)
    return {
        "Content-Type": MEDIA_TYPES.get(Path(name).suffix.lower(), DOWNLOAD_TYPE),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}",
    }


class OutputFileResponse(web.FileResponse):
    """aiohttp's FileResponse (streamed, Range and conditional requests), sending the file listed_output opened and
    only it. FileResponse stats and opens a name: handed /proc/self/fd/N, the name of that open file, it reaches that
    very file, whatever its name on the volume leads to by then. And FileResponse would send a `NAME.gz` or `NAME.br`
    lying beside it, to a client accepting gzip or br, in its place, a file no result lists."""

    def __init__(self, opened: io.FileIO, headers: dict[str, str], *, slice_bytes: int, stall_timeout_s: float) -> None:
        super().__init__(f"{PROC_FDS}/{opened.fileno()}", headers=headers)
        self._opened = opened
        self._slice_bytes = slice_bytes
        self._stall_timeout_s = stall_timeout_s

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request)
        finally:
            self._opened.close()  # FileResponse opened its own, or never will

    async def _sendfile(self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int) -> AbstractStreamWriter:
        """FileResponse's, `slice_bytes` at a time, each within `stall_timeout_s`, else the connection is closed: a
        client that stopped reading held its connection and the open file for good (aiohttp has no write timeout).
        Closed too when the file ends before the length announced."""
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        loop, transport = asyncio.get_running_loop(), request.transport
        for start in range(offset, offset + count, self._slice_bytes):
            if transport is None or transport.is_closing():
                raise ConnectionResetError("Connection lost")
            size = min(self._slice_bytes, offset + count - start)
            try:
                async with asyncio.timeout(self._stall_timeout_s):
                    sent = await loop.sendfile(transport, fobj, start, size)
            except TimeoutError:
                log.info("output_write_stalled", path=request.path, bytes_sent=start - offset, bytes=count,
                         timeout_s=self._stall_timeout_s)
                drop(transport)
                return writer
            if sent < size:  # truncated on the volume meanwhile: the client would wait for the rest until idle
                log.warning("output_shrank", path=request.path, bytes_sent=start - offset + sent, bytes=count)
                drop(transport)
                return writer
        await web.StreamResponse.write_eof(self)
        return writer

    async def _prepare_open_file(
        self, request: web.BaseRequest, fobj: Any, st: os.stat_result, file_encoding: str | None
    ) -> AbstractStreamWriter | None:
        """FileResponse's, its Range left out unless If-Range, when sent, names the version at hand (RFC 9110
        13.1.5): aiohttp reads If-Range only as a date, and answered a stale ETag with the new file's bytes. Left
        out too where aiohttp answered 416 (the ranges asked cannot be met) to a Range a server may ignore (14.2):
        see _ignored_range. And an empty suffix (`bytes=-0`), which aiohttp reads as the whole
        file, is unsatisfiable (14.1.1): 416."""
        if hdrs.RANGE in request.headers and (not _if_range_holds(request, st) or _ignored_range(request, st)):
            unranged = CIMultiDict(request.headers)
            del unranged[hdrs.RANGE]
            request = request.clone(headers=unranged)
        elif EMPTY_SUFFIX.fullmatch(request.headers.get(hdrs.RANGE, "")):
            self.headers[hdrs.CONTENT_RANGE] = f"bytes */{st.st_size}"
            self.set_status(web.HTTPRequestRangeNotSatisfiable.status_code)
            return await web.StreamResponse.prepare(self, request)
        return await super()._prepare_open_file(request, fobj, st, file_encoding)

    def _get_file_path_stat_encoding(self, accept_encoding: str) -> tuple[Path | None, os.stat_result, str | None]:
        return super()._get_file_path_stat_encoding("")


def _ignored_range(request: web.BaseRequest, st: os.stat_result) -> bool:
    """Whether Range is answered with the whole file: a set of ranges (`bytes=0-1,5-6`), another unit than bytes
    (RFC 9110 14.2: ignored), or a suffix of an empty file, which is all of it (14.1.2) and no Content-Range names."""
    asked = request.headers[hdrs.RANGE]
    if "," in asked or not asked.lower().startswith("bytes="):
        return True
    return st.st_size == 0 and SOME_SUFFIX.fullmatch(asked) is not None


def _if_range_holds(request: web.BaseRequest, st: os.stat_result) -> bool:
    """Whether If-Range is absent or names this version of the file: its ETag, compared strongly (a weak one never
    matches), or a date not before its last change, as aiohttp compares it."""
    validator = request.headers.get(hdrs.IF_RANGE)
    if validator is None:
        return True
    if (date := request.if_range) is not None:
        return st.st_mtime <= date.timestamp()
    return validator.strip() == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # the ETag FileResponse sends
