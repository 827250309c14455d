"""The pseudonymisation secret on disk.

The secret is what makes pseudonyms irreversible, so it lives in a file outside the
database and is never logged. Losing it changes every pseudonym and date shift, which is
why a missing file is created once (and then kept) rather than regenerated per start.
The secret is the file's content with surrounding whitespace removed, used as the HMAC
key as it is; an operator may provide their own file in place of the generated one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

from core.errors import ConfigError

from .vault import MIN_SECRET_BYTES

_GENERATED_BYTES = 32
# Other users must neither read the key nor be able to replace it with one they know.
_FORBIDDEN_MODE_BITS = stat.S_IROTH | stat.S_IWOTH


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret at ``path``, creating it (32 random bytes, hex, mode 0600) if missing.

    Raises ConfigError if the file cannot be read, is not a regular file, is empty or too
    short, or is accessible to other users.
    """
    path = Path(path)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    _create(path)
    return _read(path)


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the de-identification secret file {path}") from exc
    try:
        # fstat on the open descriptor: the mode checked is that of the file read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"de-identification secret {path} is not a regular file")
        if info.st_mode & _FORBIDDEN_MODE_BITS:
            raise ConfigError(f"de-identification secret {path} is accessible to other users; chmod 600 it")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read the de-identification secret file {path}") from exc
    finally:
        os.close(fd)
    secret = b"".join(chunks).strip()
    if not secret:
        raise ConfigError(f"de-identification secret file {path} is empty")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"de-identification secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def _create(path: Path) -> None:
    content = (secrets.token_hex(_GENERATED_BYTES) + "\n").encode("ascii")
    try:
        # mkstemp creates the file 0600 whatever the umask, in the same directory so that
        # the link below is atomic.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot create the de-identification secret file {path}") from exc
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        # link, unlike rename, never replaces an existing file: if another process created
        # the secret meanwhile, its secret wins and both processes read the same one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot create the de-identification secret file {path}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry survive a crash; not every platform allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
