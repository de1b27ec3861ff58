"""Fetch a dataset archive: from the local mirror when it has it, else a resumable streaming download."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lwpar.core.errors import LwparError
from lwpar.core.io import sha256_file

CHUNK = 1 << 20


def verify_sha256(path: Path, expected: str | None) -> str:
    """Hash `path`; if `expected` is given, a mismatch is an error naming the file and both hashes."""
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        raise LwparError(f"{path}: sha256 mismatch: expected {expected.lower()}, got {actual}")
    return actual


def fetch(name: str, url: str | None, sha256: str | None, mirror: Path | None, download_dir: Path,
          timeout: float = 60.0) -> tuple[Path, str]:
    """Return (local path, sha256) of archive `name`.

    The mirror is read in place (nothing copied). Otherwise the file is downloaded to
    `download_dir/name`, resuming a `.part` file left by an interrupted download.
    """
    if mirror is not None:
        candidate = mirror / name
        if candidate.exists():
            if candidate.is_dir():
                return candidate, "directory"
            return candidate, verify_sha256(candidate, sha256)
    target = download_dir / name
    if target.exists():
        try:
            return target, verify_sha256(target, sha256)
        except LwparError:
            target.unlink()  # a stale or corrupt earlier download: fetch again
    if not url:
        where = f"{mirror}/{name}" if mirror else f"{target}"
        raise LwparError(f"{name}: not found and no url to download it from; put it at {where}")
    _download(url, target, timeout)
    try:
        return target, verify_sha256(target, sha256)
    except LwparError:
        bad = target.with_name(target.name + ".bad")
        os.replace(target, bad)
        raise


def _download(url: str, target: Path, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lwpar"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already whole
            os.replace(part, target)
            return
        raise LwparError(_offline_message(url, target, f"HTTP {exc.code}")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LwparError(_offline_message(url, target, str(reason))) from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=target.name, disable=None
        ) as bar:
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError) as exc:
                raise LwparError(
                    f"{url}: connection lost after {out.tell()} bytes ({exc}); run again to resume"
                ) from None
    if total is not None and part.stat().st_size != total:
        raise LwparError(f"{url}: incomplete download ({part.stat().st_size} of {total} bytes); run again to resume")
    os.replace(part, target)


def _offline_message(url: str, target: Path, reason: str) -> str:
    return (f"cannot download {url} ({reason}); put {target.name} in the mirror folder "
            f"(params paths.mirror or LWPAR_MIRROR) or at {target}")


def copy_into(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
