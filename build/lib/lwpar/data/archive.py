"""Safe extraction: no member may escape the target folder, and corruption is reported as such."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from lwpar.core.errors import LwparError
from lwpar.core.progress import Progress


def _check_member(archive: Path, name: str) -> PurePosixPath:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise LwparError(f"{archive}: unsafe member {name!r} (absolute path)")
    if ".." in posix.parts:
        raise LwparError(f"{archive}: unsafe member {name!r} (escapes the target folder with '..')")
    return posix


def _open(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise LwparError(f"{archive}: truncated or corrupt zip archive (no central directory)") from None
    except FileNotFoundError:
        raise LwparError(f"{archive}: archive not found") from None


def _checked_infos(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    for info in infos:
        _check_member(archive, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise LwparError(f"{archive}: unsafe member {info.filename!r} (symbolic link)")
    return infos


def list_members(archive: Path) -> list[str]:
    """The files of `archive` as POSIX paths relative to its root, every member checked as for
    extraction: what a subset run reads to decide which members it needs."""
    with _open(archive) as zf:
        return [_check_member(archive, info.filename).as_posix() for info in _checked_infos(archive, zf)
                if not info.is_dir()]


def extract_zip(archive: Path, target: Path, members: set[str] | None = None) -> list[str]:
    """Extract `archive` (all members, or those named as `list_members` names them) under `target`;
    return the names extracted.

    Every member is checked before anything is written. The caller extracts into a temporary
    folder that it renames into place, so a half-done extraction never looks finished.
    """
    extracted = []
    with _open(archive) as zf:
        infos = [info for info in _checked_infos(archive, zf) if not info.is_dir() and (
            members is None or _check_member(archive, info.filename).as_posix() in members)]
        with Progress(len(infos), f"extracting {archive.name}", unit="file") as progress:
            for info in infos:
                relative = _check_member(archive, info.filename)
                out = target.joinpath(*relative.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (zipfile.BadZipFile, EOFError, OSError) as exc:
                    if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
                        raise LwparError(f"{out}: cannot write ({exc.strerror})") from None
                    raise LwparError(f"{archive}: truncated or corrupt archive at member {info.filename!r} ({exc})") from None
                extracted.append(relative.as_posix())
                progress.update()
    return extracted
