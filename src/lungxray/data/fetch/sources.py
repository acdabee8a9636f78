"""Materialise each declared source as a local folder under ``data/raw/<source>/``.

* ``folder``: a symlink to the local directory.
* ``kaggle``: downloaded and cached by kagglehub (resumable; credentials used when present), then a symlink to the
  cache.
* ``archive``: a .zip / .tar(.gz) from a local path or an http(s) URL, checked against its sha256, extracted safely.
* ``medmnist``: a MedMNIST ``.npz`` (local or URL), written out as one PNG per image, keeping its official splits.

Every step that writes a file writes it under a temporary name first and renames it when complete, so an interrupted
run never leaves something a later run takes as complete; downloads resume from their ``.part`` file.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from lungxray.core.config import ArchiveSource, FolderSource, KaggleSource, MedmnistSource
from lungxray.core.errors import SourceError
from lungxray.core.io import sha256_file
from lungxray.core.schema import DOWNLOAD_DIR, RAW_DIR, SPLITS

MARKER = ".lungxray-complete"
CHUNK = 1 << 20


def _offline_hint(name: str) -> str:
    return (
        f"To run without network, put a local copy on disk and declare source '{name}' with kind: folder "
        f"(or kind: archive with a local 'path'), or run the offline profile: make run CONFIG=configs/shared-data.yaml"
    )


# --------------------------------------------------------------------------------------------------------------------
# links and completed folders under data/raw


def _link(target: Path, link: Path) -> None:
    """Point ``link`` at ``target``, replacing an older link (never a real folder that is not ours)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        link.unlink()
    elif link.exists():
        if (link / MARKER).exists():
            shutil.rmtree(link)  # a folder a previous run extracted for another kind of source
        else:
            raise SourceError(f"{link} exists and was not made by lungxray; move it away and rerun")
    tmp = link.with_name(f".{link.name}.link-tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)


def _completed(dest: Path, key: str) -> bool:
    marker = dest / MARKER
    return dest.is_dir() and not dest.is_symlink() and marker.exists() and marker.read_text().strip() == key


def _publish_dir(tmp: Path, dest: Path, key: str) -> None:
    """Mark ``tmp`` complete and move it to ``dest`` (replacing an older copy)."""
    (tmp / MARKER).write_text(key + "\n")
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _fresh_tmp_dir(dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted run: never reused as if complete
    tmp.mkdir(parents=True)
    return tmp


# --------------------------------------------------------------------------------------------------------------------
# downloads


def download(url: str, dest: Path, expected_sha256: str | None, source: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` with resume; verify the sha256; return ``dest``.

    Bytes arrive in ``dest.part``; an interrupted download resumes from there (HTTP Range) on the next run. Only a file
    whose checksum matches is renamed to ``dest``.
    """
    if dest.exists() and (expected_sha256 is None or sha256_file(dest) == expected_sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "lungxray"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if have and resp.status != 206:  # server ignored the range: start again
                have = 0
            length = resp.headers.get("Content-Length")
            expected = have + int(length) if length and length.isdigit() else None
            with open(part, "ab" if have else "wb") as out:
                shutil.copyfileobj(resp, out, CHUNK)
            got = part.stat().st_size
            if expected is not None and got < expected:
                raise ConnectionError(f"connection closed after {got} of {expected} bytes")
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked past the end: the .part file is already whole
            pass
        else:
            raise SourceError(f"source '{source}': downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SourceError(
            f"source '{source}': could not reach {url} ({reason}). The partial download is kept in {part} and the "
            f"next run resumes it.\n{_offline_hint(source)}"
        ) from None
    if expected_sha256 is not None:
        actual = sha256_file(part)
        if actual != expected_sha256.lower():
            part.unlink()
            raise SourceError(
                f"source '{source}': checksum mismatch for {url}\n  expected sha256 {expected_sha256.lower()}\n"
                f"  actual   sha256 {actual}\nThe file was deleted. Check the URL, or update 'sha256' in params if the "
                f"publisher changed the file on purpose."
            )
    os.replace(part, dest)
    return dest


def _url_basename(url: str, fallback: str) -> str:
    name = PurePosixPath(urllib.request.urlparse(url).path).name
    return name or fallback


# --------------------------------------------------------------------------------------------------------------------
# archives


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise SourceError(
            f"archive {archive} holds a member with an unsafe path '{name}' (absolute or with '..'); refusing to "
            f"extract it (zip-slip). Use an archive from a trusted publisher."
        )
    return p


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a .zip or .tar(.gz/.bz2/.xz) into ``dest``, refusing absolute paths, '..' and links."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                _safe_member(m.filename, archive)
            for m in members:
                target = dest / _safe_member(m.filename, archive)
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError:
        raise SourceError(f"{archive} is neither a zip nor a tar archive (or it is damaged)") from None
    with tf:
        members = tf.getmembers()
        for m in members:
            _safe_member(m.name, archive)
            if m.issym() or m.islnk() or m.isdev():
                raise SourceError(f"archive {archive} holds a link or device member '{m.name}'; refusing to extract it")
        for m in members:
            target = dest / _safe_member(m.name, archive)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)


def _materialise_archive(src: ArchiveSource, timeout: float) -> Path:
    dest = RAW_DIR / src.name
    key = f"archive sha256={src.sha256.lower()}"
    if _completed(dest, key):
        return dest
    if src.url:
        local = download(src.url, DOWNLOAD_DIR / src.name / _url_basename(src.url, "archive"), src.sha256, src.name,
                         timeout)
    else:
        local = Path(src.path)  # type: ignore[arg-type]
        if not local.is_file():
            raise SourceError(f"source '{src.name}': archive not found: {local}")
        actual = sha256_file(local)
        if actual != src.sha256.lower():
            raise SourceError(
                f"source '{src.name}': checksum mismatch for {local}\n  expected sha256 {src.sha256.lower()}\n"
                f"  actual   sha256 {actual}"
            )
    tmp = _fresh_tmp_dir(dest)
    try:
        extract_archive(local, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_dir(tmp, dest, key)
    return dest


# --------------------------------------------------------------------------------------------------------------------
# kaggle


def kaggle_download(src: KaggleSource) -> Path:
    """Download (or reuse from kagglehub's cache) a Kaggle dataset; return its local folder."""
    import kagglehub
    import requests

    handle = src.dataset if src.version is None else f"{src.dataset}/versions/{src.version}"
    try:
        path = kagglehub.dataset_download(handle)
    except requests.exceptions.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        hint = (
            "It may be private or need you to accept its rules: put your API token in ~/.kaggle/kaggle.json or set "
            "KAGGLE_USERNAME and KAGGLE_KEY (never in params.yaml)."
            if code in (401, 403)
            else "Check the dataset slug and version in params.yaml."
        )
        raise SourceError(f"source '{src.name}': Kaggle refused dataset '{handle}' (HTTP {code}). {hint}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise SourceError(
            f"source '{src.name}': could not reach Kaggle to download '{handle}' ({type(e).__name__}). kagglehub keeps "
            f"partial downloads and resumes them on the next run. A dataset already in kagglehub's cache is used "
            f"offline only when its 'version' is pinned in params.\n{_offline_hint(src.name)}"
        ) from None
    except Exception as e:  # kagglehub wraps some failures in its own exception types
        raise SourceError(f"source '{src.name}': kagglehub could not fetch '{handle}': {e}") from None
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# medmnist


def _write_png_gray(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    img = Image.fromarray(arr)
    img.save(path, format="PNG")


def medmnist_splits(npz: np.lib.npyio.NpzFile, source: str) -> list[str]:
    splits = [s for s in SPLITS if f"{s}_images" in npz.files]  # MedMNIST's keys use our split names
    if not splits:
        raise SourceError(
            f"source '{source}': the .npz has none of the MedMNIST keys train_images / val_images / test_images "
            f"(keys found: {sorted(npz.files)})"
        )
    for s in splits:
        if f"{s}_labels" not in npz.files:
            raise SourceError(f"source '{source}': '{s}_images' has no matching '{s}_labels' in the .npz")
    return splits


def _materialise_medmnist(src: MedmnistSource, timeout: float) -> Path:
    if src.url:
        local = download(src.url, DOWNLOAD_DIR / src.name / _url_basename(src.url, "medmnist.npz"), src.sha256,
                         src.name, timeout)
    else:
        local = Path(src.path)  # type: ignore[arg-type]
        if not local.is_file():
            raise SourceError(f"source '{src.name}': MedMNIST file not found: {local}")
    digest = sha256_file(local)
    if src.sha256 and digest != src.sha256.lower():
        raise SourceError(
            f"source '{src.name}': checksum mismatch for {local}\n  expected sha256 {src.sha256.lower()}\n"
            f"  actual   sha256 {digest}"
        )
    dest = RAW_DIR / src.name
    key = f"medmnist sha256={digest}"
    if _completed(dest, key):
        return dest
    try:
        npz = np.load(local, allow_pickle=False)
    except Exception as e:
        raise SourceError(f"source '{src.name}': {local} is not a readable .npz file: {e}") from None
    tmp = _fresh_tmp_dir(dest)
    try:
        with npz:
            for split in medmnist_splits(npz, src.name):
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
                if len(images) != len(labels):
                    raise SourceError(f"source '{src.name}': {split}_images and {split}_labels differ in length")
                labels = labels.reshape(len(labels), -1)
                if labels.shape[1] != 1:
                    raise SourceError(
                        f"source '{src.name}': multi-label MedMNIST files are not supported ({split}_labels has "
                        f"shape {npz[f'{split}_labels'].shape})"
                    )
                for i, (img, lab) in enumerate(zip(images, labels[:, 0])):
                    folder = tmp / split / str(int(lab))
                    folder.mkdir(parents=True, exist_ok=True)
                    _write_png_gray(np.asarray(img, dtype=np.uint8), folder / f"{split}_{i:06d}.png")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_dir(tmp, dest, key)
    return dest


# --------------------------------------------------------------------------------------------------------------------


def materialise(src, timeout: float = 60.0) -> Path:
    """Make the source available under ``data/raw/<name>`` and return that path (relative to the repo root)."""
    link = RAW_DIR / src.name
    if isinstance(src, FolderSource):
        folder = Path(src.path)
        if not folder.is_dir():
            raise SourceError(
                f"source '{src.name}': folder not found: {folder} (resolved: {folder.resolve()}). Check 'path' in "
                f"params.yaml; relative paths are taken from the repository root."
            )
        _link(folder, link)
    elif isinstance(src, KaggleSource):
        _link(kaggle_download(src), link)
    elif isinstance(src, ArchiveSource):
        _materialise_archive(src, timeout)
    elif isinstance(src, MedmnistSource):
        _materialise_medmnist(src, timeout)
    else:  # pragma: no cover - the config model admits only the kinds above
        raise SourceError(f"unknown source kind for '{src.name}'")
    return link
