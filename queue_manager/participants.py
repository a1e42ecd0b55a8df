"""Participants' own tokens: the file that lists them, one `user_id sha256:<hex>` a line, read at start and
re-read while the queue manager runs whenever it changes.

The file holds the SHA-256 of each token, never a token: a copy of it leaks nobody's token. Tokens are made by
`add_participant` (32 random bytes), so a plain hash is enough; there is nothing to guess a token from.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import structlog

from common.durable import replace_whole
from common.small_files import FileTooLarge, NotARegularFile, read_small_file
from queue_manager.models import USER_ID_PATTERN

log = structlog.get_logger()

HASH_PREFIX = "sha256:"
_HEX_DIGITS = frozenset("0123456789abcdef")
# About 80 bytes a participant: room for tens of thousands, and a bound on what the server reads.
MAX_FILE_BYTES = 4 * 2**20

T = TypeVar("T")


class ParticipantsFileError(Exception):
    """The participants file cannot be used: which file, which line (None: the whole file), and why."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path} line {line}" if line is not None else str(path)
        super().__init__(f"participants file {where}: {reason}")


def token_hash(token: str) -> str:
    """What the file keeps of a token: `sha256:<64 hex digits>`."""
    return HASH_PREFIX + hashlib.sha256(token.encode(errors="surrogateescape")).hexdigest()  # as app.py's bearer


@dataclass(frozen=True)
class Participants:
    """Who holds which token, by the token's hash."""

    user_by_hash: dict[str, str] = field(default_factory=dict)
    # Why the file, changed since these were read, cannot be used. Its edit may have revoked any of them, so none is
    # to be let in (fail closed) until the file is fixed.
    problem: ParticipantsFileError | None = None

    def __len__(self) -> int:
        return len(self.user_by_hash)

    def holder(self, token: str) -> str | None:
        """The user_id whose token this is, or None. A lookup by hash: what it could leak by its timing is the
        hash of a random token, not the token."""
        return self.user_by_hash.get(token_hash(token))


def parse_line(text: str) -> tuple[str, str] | None:
    """(user_id, hash) of one line, None for a blank line or a comment; ValueError saying what is wrong."""
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    if len(fields) != 2:
        raise ValueError(f"expected 'user_id {HASH_PREFIX}<64 hex digits>', found {len(fields)} fields")
    user_id, hashed = fields
    if not USER_ID_PATTERN.fullmatch(user_id):
        raise ValueError("the user_id must be 1 to 100 letters, digits, '_' or '-'")
    digest = hashed.removeprefix(HASH_PREFIX)
    if digest == hashed or len(digest) != 64 or not set(digest) <= _HEX_DIGITS:
        raise ValueError(f"the hash must be '{HASH_PREFIX}' and 64 lowercase hex digits (python -m queue_manager "
                         "add-participant makes it)")
    return user_id, hashed


def parse(path: Path, text: str) -> Participants:
    user_by_hash: dict[str, str] = {}
    line_of_user: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            entry = parse_line(line)
        except ValueError as exc:
            raise ParticipantsFileError(path, number, str(exc)) from None
        if entry is None:
            continue
        user_id, hashed = entry
        if user_id in line_of_user:
            raise ParticipantsFileError(path, number, f"{user_id} is listed twice (first on line "
                                                      f"{line_of_user[user_id]})")
        if hashed in user_by_hash:
            raise ParticipantsFileError(path, number, f"the same token as {user_by_hash[hashed]}'s: give each "
                                                      "participant their own")
        user_by_hash[hashed] = user_id
        line_of_user[user_id] = number
    return Participants(user_by_hash)


def read_text(path: Path) -> str:
    try:
        # A FIFO named here (no writer) blocked a plain open for good, the server's start or its event loop with
        # it, and SIGTERM could not end it.
        data = read_small_file(path, MAX_FILE_BYTES)
        return data.decode("utf-8-sig")  # a BOM (Windows' Notepad) read as part of line 1's user_id refused the file
    except UnicodeDecodeError:
        raise ParticipantsFileError(path, None, "is not UTF-8 text") from None
    except (IsADirectoryError, NotARegularFile):
        raise ParticipantsFileError(path, None, "is not a regular file") from None
    except FileTooLarge:
        raise ParticipantsFileError(path, None, f"is larger than {MAX_FILE_BYTES // 2**20} MiB: not a "
                                                "participants file") from None
    except OSError as exc:
        raise ParticipantsFileError(path, None, f"cannot be read: {exc.strerror or exc}") from None


def read_participants(path: Path) -> Participants:
    return parse(path, read_text(path))


def _signature(path: Path) -> tuple[int, int, int] | str:
    """What changes when the file does (a rename onto it changes the inode), or why it cannot be looked at."""
    try:
        status = path.stat()
    except OSError as exc:
        return exc.strerror or str(exc)
    return status.st_ino, status.st_mtime_ns, status.st_size


class ParticipantsFile:
    """The participants the server goes by: the file's last good contents, re-read when it changes.

    `current()` looks at the file each time it is asked (a stat, 2 µs); a change that cannot be read or parsed
    marks the last good set with the problem (their tokens are refused, not let in) and logs
    `participants_file_invalid` once, until the file changes again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._participants = Participants()
        self._seen: tuple[int, int, int] | str | None = None

    def load(self) -> Participants:
        """Read it now; ParticipantsFileError when it cannot be used (at start: the server must not run)."""
        seen = _signature(self.path)
        self._participants = read_participants(self.path)
        self._seen = seen
        return self._participants

    def current(self) -> Participants:
        seen = _signature(self.path)
        if seen == self._seen:
            return self._participants
        self._seen = seen
        try:
            participants = read_participants(self.path)
        except ParticipantsFileError as exc:
            log.error("participants_file_invalid", file=str(self.path), line=exc.line, reason=exc.reason,
                      refused=len(self._participants))
            self._participants = replace(self._participants, problem=exc)
            return self._participants
        log.info("participants_file_reloaded", file=str(self.path), participants=len(participants))
        self._participants = participants
        return participants


def add_participant(path: Path, user_id: str) -> str:
    """Give `user_id` a new token: their line in the file (added, or replacing the one they had) holds its hash.
    Returns the token, which is kept nowhere."""
    return _change(path, user_id, _add_line)


def remove_participant(path: Path, user_id: str) -> bool:
    """Take `user_id`'s line out of the file: their token stops working at the server's next look. False, the file
    untouched, when they have no line."""
    return _change(path, user_id, _remove_line)


def _change(path: Path, user_id: str, change: Callable[[Path, str], T]) -> T:
    """`change(path, user_id)` under a lock on the file's folder, so runs at once take turns and none loses
    another's line. Changes replace the file whole (`_replace`), so a server reading it never sees half of it."""
    if not USER_ID_PATTERN.fullmatch(user_id):
        raise ValueError(f"{user_id!r} cannot be a user_id: 1 to 100 letters, digits, '_' or '-'")
    # A symbolic link's file is the one to change: renamed onto the link, the new file replaced the link and the
    # file it names (the one a server may read) never had the change.
    path = Path(os.path.realpath(path))
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ParticipantsFileError(path, None, f"its folder cannot be opened: {exc.strerror or exc}") from None
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        return change(path, user_id)
    finally:
        os.close(folder)  # and the lock with it


def _user_of(line: str) -> str | None:
    return entry[0] if (entry := parse_line(line)) is not None else None


def _add_line(path: Path, user_id: str) -> str:
    text = read_text(path) if path.exists() else ""
    parse(path, text)  # a broken file is the operator's to fix: never written over
    token = secrets.token_urlsafe(32)
    line = f"{user_id} {token_hash(token)}\n"
    kept, replaced = [], False
    for existing in text.splitlines(keepends=True):
        if _user_of(existing) == user_id:
            kept.append(line)
            replaced = True
        else:
            kept.append(existing if existing.endswith("\n") else existing + "\n")
    if not replaced:
        kept.append(line)
    _replace(path, "".join(kept))
    return token


def _remove_line(path: Path, user_id: str) -> bool:
    text = read_text(path)  # a missing file is refused, never created
    parse(path, text)
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if _user_of(line) != user_id]
    if len(kept) == len(lines):
        return False
    _replace(path, "".join(kept))
    return True


def _replace(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    replace_whole(path, text, Path(temporary), mode)
