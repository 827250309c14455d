"""The data directory belongs to the sidecar's account alone: the directory 0700, every
entry in it without group or other permissions.

It holds raw messages (inbox, intake journal), the re-identification map, identifier
tokens and the pseudonym secret; another local account reading any of them undoes
de-identification. Each command that opens the directory calls ``secure_data_dir`` before
it creates anything there: the process umask becomes 0o077, so what SQLite, the journal
and the object writer create later (-wal and -shm files included) is owner-only, and what
already exists is checked.

An entry open to others is tightened, with a warning, rather than refused: directories
created by earlier versions (under a login umask of 022) are the common case, and the
sidecar can fix its own files as well as an operator could. ``secret.key`` is refused
instead (deid.secret) because a key others could read may already be copied, which no
chmod undoes. What cannot be tightened (another account's entry) is refused with
ConfigError.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection
from pathlib import Path

from core.errors import ConfigError

__all__ = ["PRIVATE_UMASK", "private_umask", "secure_data_dir"]

PRIVATE_UMASK = 0o077
_OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO
# As deid.secret refuses them: other users able to read the key or swap in one they know.
_SECRET_FORBIDDEN_BITS = stat.S_IROTH | stat.S_IWOTH

log = logging.getLogger(__name__)


def private_umask() -> None:
    """Make everything this process (and its children) creates from now on owner-only."""
    os.umask(PRIVATE_UMASK)


def secure_data_dir(root: Path, *, create: bool = True, secrets: Collection[Path] = ()) -> None:
    """Set the private umask, create ``root`` 0700 if missing (when ``create``), and remove
    group and other permissions from it and every entry below it, logging one warning per
    top-level entry that needed it.

    Raises ConfigError when ``root`` is not a directory, an entry cannot be tightened, or
    one of ``secrets`` (the pseudonym secret file) is open to other users: that one is
    refused, not tightened, as deid.secret refuses it.
    """
    private_umask()
    root = Path(root)
    if not root.exists():
        if not create:
            return
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A data directory that is a symlink (to a bigger disk, say) is checked where it leads.
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"data directory {root} is not a directory")
    secret_files = {Path(p).resolve() for p in secrets}
    tightened: dict[str, int] = {}
    _tighten(root, root, tightened)
    # Top-down: each directory is tightened before what lies in it is listed.
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path in secret_files:
                _refuse_open_secret(root, path)
            _tighten(root, path, tightened)
    for top, entries in tightened.items():
        # Only the top-level name: a name further down may be a patient's (a drop file).
        log.warning(
            "data directory entry was open to other users; group and other permissions removed",
            extra={"path": top, "entries": entries},
        )


def _refuse_open_secret(root: Path, path: Path) -> None:
    if path.lstat().st_mode & _SECRET_FORBIDDEN_BITS:
        raise ConfigError(
            f"de-identification secret {path.relative_to(root)} in the data directory {root} is "
            "accessible to other users: if it may have been copied, pseudonyms can be reversed; "
            "chmod 600 it only if you know nobody read it"
        )


def _tighten(root: Path, path: Path, tightened: dict[str, int]) -> None:
    info = path.lstat()
    mode = stat.S_IMODE(info.st_mode)
    # A symlink's own mode means nothing and its target is not ours to change.
    if stat.S_ISLNK(info.st_mode) or not mode & _OPEN_BITS:
        return
    parts = path.relative_to(root).parts
    top = parts[0] if parts else "."
    try:
        # Never through a symlink swapped in meanwhile: only this entry's mode changes.
        os.chmod(path, mode & ~_OPEN_BITS, follow_symlinks=False)
    except (OSError, NotImplementedError) as exc:
        where = top if len(parts) <= 1 else f"an entry under {top}"
        raise ConfigError(
            f"{where} in the data directory {root} is accessible to other users and cannot be "
            f"tightened ({type(exc).__name__}); run as its owner, or chmod -R go-rwx the directory"
        ) from exc
    tightened[top] = tightened.get(top, 0) + 1
