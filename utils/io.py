"""Checked file reading and durable writes: every failure is one line naming the file and the fault."""
from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path


class DataError(ValueError):
    """Bad or missing input data; str(err) is a one-line message naming the file."""


def require_dir(path, what: str = "data folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found (generate one with `python scripts/make_synthetic_data.py` "
                        f"or unzip the Kaggle data there)")
    return path


def read_csv_checked(path, required=(), what: str = "csv") -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    import pandas as pd  # imported where used: the sweep imports this module and should start fast

    try:
        df = pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - any parse failure becomes one clear line
        raise DataError(f"{path}: cannot read {what}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def fsync_path(path) -> None:
    """Flush a file's (or a folder's) data to disk; a folder's fsync makes a rename in it durable."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # e.g. folders cannot be opened on some platforms: nothing more to do there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class WriteError(DataError, OSError):
    """A file could not be written (a full disk, a lost mount, no permission): one line, and the file's
    previous content is unchanged. Still an OSError for callers that handle those."""


def atomic_write(path, write_fn) -> None:
    """Call write_fn(tmp_path), fsync it, rename onto `path`, fsync the folder: readers never see half a
    file, and after a crash or power loss the path holds either the old or the whole new content. A SIGKILL
    leaves the temporary `.<name>.*.tmp` behind: `remove_stale_temps` clears it later. A failed write (a full
    disk) raises WriteError and leaves the old file as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write_fn(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if not _about_this_write(err, path):
            raise  # e.g. write_fn could not read its source: that file's own error
        kept = f"the previous {path.name} is unchanged" if path.is_file() else "nothing was written"
        raise WriteError(f"cannot write {path}: {err.strerror or err} ({kept})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    fsync_path(path.parent)


def _about_this_write(err: OSError, path: Path) -> bool:
    """An error of the write itself: no file named (a full disk on write), or the folder, the file or its
    temporary file named."""
    if err.filename is None:
        return True
    named = Path(os.fsdecode(err.filename))
    return named in (path, path.parent) or (named.parent == path.parent and named.name.startswith(f".{path.name}."))


def remove_stale_temps(folder, older_than: float, pattern: str = ".*.tmp") -> list[Path]:
    """Remove the temporary files of atomic writes (`pattern` in `folder`) last written before `older_than`
    (a time.time() value): what a writer killed by SIGKILL left. Newer ones may belong to a live writer
    and are kept. Returns the files removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(pattern):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < older_than:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            pass  # its writer finished (or another clean-up removed it) meanwhile
    return removed


def atomic_write_text(path, data) -> None:
    """Write a str or bytes atomically."""
    mode = "wb" if isinstance(data, bytes) else "w"

    def write(tmp):
        with open(tmp, mode) as fh:
            fh.write(data)

    atomic_write(path, write)


def atomic_write_csv(path, df: pd.DataFrame) -> None:
    """DataFrame -> csv (no index) atomically."""
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def one_line(err: BaseException) -> str:
    """The error's own message. A DataLoader worker's error reaches the main process re-raised with the
    worker's whole traceback as its message; its last line ("module.Class: message") is the message."""
    text = str(err)
    if "\nOriginal Traceback" in text and text.startswith("Caught "):
        last = text.rstrip().splitlines()[-1]
        prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
        for p in (prefix, f"{type(err).__qualname__}: "):
            if last.startswith(p):
                return last[len(p):]
        return last
    return text.splitlines()[0] if text else type(err).__name__


def warn(message: str) -> None:
    """A one-line warning on stderr (input that is scored, but not as the user may assume)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """A one-line error on stderr (what stops a script, or one input of many that the script passes over)."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def run_cli(main, argv=None) -> int:
    """Run a script's main; data/config errors print one line on stderr and exit 2."""
    from utils.config import ConfigError

    try:
        main(argv)
        return 0
    except (DataError, ConfigError) as err:
        error(one_line(err))
    # what the failed call held (its traceback's frames: DataLoader iterators and their workers) is freed
    # now, so the workers are shut down by their loader, not killed at exit (which PyTorch reports)
    gc.collect()
    return 2
