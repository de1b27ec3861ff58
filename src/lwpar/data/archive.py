"""Safe extraction: no member may escape the target folder, and corruption is reported as such."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from lwpar import LwparError


def _check_member(archive: Path, name: str) -> PurePosixPath:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise LwparError(f"{archive}: unsafe member {name!r} (absolute path)")
    if ".." in posix.parts:
        raise LwparError(f"{archive}: unsafe member {name!r} (escapes the target folder with '..')")
    return posix


def extract_zip(archive: Path, target: Path, members: set[str] | None = None) -> list[str]:
    """Extract `archive` (all members, or those named) under `target`; return the names extracted.

    Every member is checked before anything is written. The caller extracts into a temporary
    folder that it renames into place, so a half-done extraction never looks finished.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise LwparError(f"{archive}: truncated or corrupt zip archive (no central directory)") from None
    except FileNotFoundError:
        raise LwparError(f"{archive}: archive not found") from None
    extracted = []
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise LwparError(f"{archive}: unsafe member {info.filename!r} (symbolic link)")
        for info in infos:
            if info.is_dir() or (members is not None and info.filename not in members):
                continue
            out = target.joinpath(*_check_member(archive, info.filename).parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
                    raise LwparError(f"{out}: cannot write ({exc.strerror})") from None
                raise LwparError(f"{archive}: truncated or corrupt archive at member {info.filename!r} ({exc})") from None
            extracted.append(info.filename)
    return extracted
