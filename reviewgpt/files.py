"""Writing what a user cares about so that a crash, a full disk or a typo never costs a file.

- Whole files (summaries, recipes, metadata, exports, rejects, plots) are written under a temporary
  name in the same folder and renamed over the final name (`atomic_write_text`, `atomic_path`): a
  reader sees the old file or the new one, never half of one. A kill mid-write leaves only a
  temporary file (`.NAME.PID.tmp`, `is_temporary`), which nothing reads and the next run removes.
- Lines appended to a JSONL output (`append_line`) are written in one system call; a short write (a
  full disk) is rolled back, so a line is in the file whole or not at all. A SIGKILL can still cut a
  large write short; readers of such files drop a last line without its newline only when it starts
  as their own lines do (`eval.generate.done_ids`), never a line someone else wrote.
- An output that is one of the command's inputs is refused before anything is written
  (`refuse_output_is_input`): `review --papers X --output X` would append reviews into the data.
- `os_error_message` turns an OSError on a user's path (read-only disk, missing folder, a file where
  a folder is needed, a full disk) into one sentence naming the path and what to do; the CLI prints
  it and exits 2.

Imports nothing from reviewgpt but errors.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

from reviewgpt.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, beside it, per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temporary(name: str) -> bool:
    """A file `atomic_path` writes before the rename (left behind only by a killed process)."""
    return bool(_TEMPORARY.match(name))


def remove_stale_temporaries(folder: PathLike, names: Optional[tuple] = None) -> int:
    """Remove the temporary files and folders a killed writer left in `folder` (only those of `names`,
    when given: the folder may hold other writers' temporaries); returns how many."""
    removed = 0
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.iterdir():
            if not is_temporary(child.name):
                continue
            if names is not None and not any(child.name.startswith(f".{name}.") for name in names):
                continue
            _remove(child)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; after the block it is renamed over `path` (a file or a
    folder), or removed when the block fails. For writers that take a path (savefig, save_pretrained)."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data, indent: Optional[int] = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def append_line(path: PathLike, line: str) -> None:
    """Append `line` + newline to `path` in one write; on a short write (disk full) cut the file back
    to where it was and raise ENOSPC, so no half line is left."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
        except OSError:
            os.ftruncate(fd, start)
            raise
        if written != len(data):
            os.ftruncate(fd, start)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    finally:
        os.close(fd)


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when both paths name one file (also through links or another spelling of the path)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def refuse_output_is_input(output: PathLike, inputs: Dict[str, Optional[PathLike]],
                           output_flag: str = "--output") -> None:
    """Stop before writing when `output` is one of the command's inputs ({flag: path}): the command
    would append to, or overwrite, what it reads."""
    for flag, path in inputs.items():
        if path is not None and same_file(output, path):
            raise UserError(f"{output_flag} {output} is also {flag}: writing it would overwrite what the command "
                            f"reads; pass another {output_flag}.")


def refuse_existing_folder(path: PathLike, flag: str = "--output") -> None:
    """An output file that exists as a folder: say so before any work."""
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; pass the path of a file.")


def os_error_message(exc: OSError) -> str:
    """One sentence for an OSError: the path, what is wrong with it, and what to do."""
    path = exc.filename if exc.filename is not None else "a file"
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"{path}: no space left on the disk; free some space (or pass a path on a larger disk) and run the "
                "same command again: it continues where it stopped.")
    if code == errno.EROFS:
        return f"{path}: the file system is read-only; pass a path on a writable disk."
    if code in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied; pass a path you can write to (or read, for an input)."
    if code == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder; pass a path whose folders are folders."
    if code == errno.EEXIST:
        return f"{path}: exists as a file where a folder is needed; pass a folder path or remove the file."
    if code == errno.EISDIR:
        return f"{path}: is a folder where a file is needed; pass the path of a file."
    if code == errno.ENOENT:
        return f"{path}: no such file or folder; check the path (and that its parent folder exists)."
    return f"{path}: {exc.strerror or exc}."


def is_disk_full(exc: BaseException) -> bool:
    """A full disk reported by a library that does not raise OSError: torch.save's
    "PytorchStreamWriter failed writing file", safetensors' "IoError(... StorageFull ...)"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    text = str(exc)
    return ("No space left on device" in text or "StorageFull" in text
            or "PytorchStreamWriter failed writing" in text or "file write failed" in text)


def _fsync(path: Path) -> None:
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
