"""Writing files so that nothing is lost, mixed or left behind.

Every file and output folder the package writes goes through :func:`atomic_write` or
:func:`output_folder`:

- the data go to a temporary sibling of the target, which is moved onto the target only
  once it is complete, so a crash never leaves a truncated file or half a folder, and the
  previous version stays until the new one is whole;
- an output folder that already holds files is refused unless the caller asks for it to
  be replaced, and then it is replaced as a whole (swapped in one step), never merged;
- on an exception, Ctrl-C or SIGTERM (see :func:`raise_on_termination`) the temporary is
  removed; one left by a killed process (SIGKILL, power loss) is swept away the next
  time the same target is written;
- files and folders are created with the permissions the user's umask allows, like any
  other program's, so a shared folder stays readable to colleagues;
- a failure names the target, not the temporary.

Temporaries are named ``.<target name>.<host>-<pid>-<token>.part`` (``.old`` for a
folder being replaced), so a sweep removes only those of processes that no longer run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]+\.(part|old)$"
)
# Temporary files of earlier versions (tempfile.mkstemp: ".NAME." and 8 characters),
# which name no process: swept once they are older than any write takes.
_LEGACY_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}$")
_LEGACY_AGE_S = 3600.0
_DEFERRED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP once :func:`raise_on_termination` ran.

    A :class:`KeyboardInterrupt`, so the clean-up that Ctrl-C triggers runs for it too.

    Attributes
    ----------
    signal_number : int
    """

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def _raise_interrupted(signal_number: int, _frame) -> None:
    raise Interrupted(signal_number)


def raise_on_termination() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread.

    Without it those signals end Python at once and no temporary can be removed.
    Call it once, from the main thread of a program (the command-line tool does).
    """
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise_interrupted)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (they arrive after the block), so that moving a
    finished file into place, or removing a temporary, is not cut in half."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _temporary_name(target: Path, kind: str = "part") -> Path:
    return target.with_name(f".{target.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``target`` left by processes of this host that died.

    A folder that was being replaced when its process died (``.old``) is moved back to
    ``target`` if ``target`` is missing, else removed. Temporaries of running processes,
    and of other hosts sharing the folder, are left alone. Temporary files of earlier
    versions of the package (``.<target name>.XXXXXXXX``), which name no process, are
    removed once they are an hour old.

    Returns
    -------
    list of Path
        The temporaries removed or restored.
    """
    target = Path(target)
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    swept = []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None:
            legacy = _LEGACY_TEMPORARY.match(entry.name)
            if legacy is None or legacy["name"] != target.name or not entry.is_file():
                continue
            if time.time() - entry.stat().st_mtime < _LEGACY_AGE_S:
                continue
        elif match["name"] != target.name or match["host"] != _HOST:
            continue
        elif _process_runs(int(match["pid"])):
            continue
        path = Path(entry.path)
        with _signals_deferred():
            if entry.name.endswith(".old") and not os.path.lexists(target):
                with contextlib.suppress(OSError):
                    os.rename(path, target)
            else:
                _remove(path)
        swept.append(path)
    return swept


@contextlib.contextmanager
def _naming(target: Path, temporary: Path) -> Iterator[None]:
    """Errors that name ``temporary`` name ``target`` instead."""
    try:
        yield
    except OSError as error:
        if error.filename in (str(temporary), temporary) or error.filename2 in (
            str(temporary),
            temporary,
        ):
            raise type(error)(error.errno, error.strerror, str(target)) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it onto ``path`` once complete.

    On an exception (Ctrl-C and SIGTERM included) the temporary file is removed and
    ``path`` is left as it was. The file gets the permissions of a new file under the
    user's umask. Stale temporaries of ``path`` (see :func:`sweep_temporaries`) are
    removed first.

    Parameters
    ----------
    path : str or path
        The file to (re)write; its folder is created if needed.
    mode : str
        ``"w"`` (text) or ``"wb"`` (bytes).
    **open_kwargs
        Passed to :func:`open` (``encoding``, ``newline``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "result.txt"
    >>> with atomic_write(target) as handle:
    ...     _ = handle.write("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    temporary = _temporary_name(path)
    with _naming(path, temporary):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        descriptor = os.open(temporary, flags, 0o666)
    try:
        with _naming(path, temporary):
            with os.fdopen(descriptor, mode, **open_kwargs) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            with _signals_deferred():
                os.replace(temporary, path)
    except BaseException:
        with _signals_deferred(), contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def folder_is_empty(path: str | os.PathLike) -> bool:
    """Whether ``path`` is missing or an empty folder.

    Raises
    ------
    ValueError
        If ``path`` exists and is not a folder.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return True
    if not path.is_dir():
        raise ValueError(f"{path}: is a file; expected a folder")
    with os.scandir(path) as entries:
        return next(entries, None) is None


def check_output_folder(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse ``path`` as an output folder if it holds files and ``overwrite`` is False.

    Raises
    ------
    ValueError
        Naming the folder and the way out.
    """
    if not folder_is_empty(path) and not overwrite:
        raise ValueError(
            f"{path}: is not empty; expected a new or empty folder (--overwrite replaces "
            "it as a whole)"
        )


_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where unsupported."""
    name = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(name, use_errno=True), "renameat2", None) if name else None
    if function is None:
        return False
    at_cwd = -100
    result = function(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _commit_folder(staging: Path, target: Path, overwrite: bool) -> None:
    try:
        os.rename(staging, target)  # succeeds onto a missing or empty folder only
        return
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not overwrite:
        raise ValueError(
            f"{target}: was filled by another process while this one ran; it is left as "
            "it is (--overwrite replaces it)"
        )
    if _exchange(staging, target):
        _remove(staging)  # now the previous folder
        return
    previous = _temporary_name(target, "old")
    os.rename(target, previous)
    os.rename(staging, target)
    _remove(previous)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder to fill, moved into place as ``path`` once the block completes.

    Readers never see half a result, and two writers never mix: each fills its own
    folder, and the move is one step.

    Parameters
    ----------
    path : str or path
        The output folder. It must be missing or empty unless ``overwrite``.
    overwrite : bool
        Replace a folder that holds files, as a whole (its files are removed).

    Yields
    ------
    Path
        The folder to write into (a hidden sibling of ``path``).

    Raises
    ------
    ValueError
        If ``path`` holds files and ``overwrite`` is False, checked on entry and again
        when the result is moved into place (another process may have written it
        meanwhile; then the new result is discarded and ``path`` left as it is).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "maps"
    >>> with output_folder(target) as folder:
    ...     _ = (folder / "a.txt").write_text("1")
    >>> sorted(path.name for path in target.iterdir())
    ['a.txt']
    """
    target = Path(path)
    check_output_folder(target, overwrite)
    staging = _temporary_name(target)
    with _naming(target, staging):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(target)
        os.mkdir(staging, 0o777)
    try:
        yield staging
        with _signals_deferred(), _naming(target, staging):
            _commit_folder(staging, target, overwrite)
    except BaseException:
        with _signals_deferred():
            _remove(staging)
        raise
