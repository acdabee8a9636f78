"""``lungxray dedupe``: the same dedupe on any image folders, outside the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from lungxray.core.errors import LungxrayError
from lungxray.core.schema import DEFAULT_MAX_PIXELS
from lungxray.data.dedupe.groups import find_groups
from lungxray.data.dedupe.params import DedupeParams
from lungxray.images.decode import is_image_path


def dedupe_folders(folders: list[str], out_csv: str, params: DedupeParams | None = None,
                   cache_path: str | None = None, progress: bool = True,
                   labels: Literal["parent", "none"] = "parent", max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Dedupe image folders (recursively); source = the folder argument's name; label = the image's parent folder
    name (``labels="parent"``; images directly in a given folder have none), or no labels at all (``"none"``: flat
    folders, no label-conflict check). Files that cannot be used (over ``max_pixels``, empty, not an image, ...) are
    listed in the report's ``unreadable`` with the words of fetch's rejected report."""
    from lungxray.core.io import write_csv

    params = params or DedupeParams()
    rows = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise LungxrayError(f"not a folder: {folder}")
        source = root.resolve().name
        for p in sorted(root.rglob("*")):
            if p.is_file() and is_image_path(p):
                rows.append({"id": f"{source}/{p.relative_to(root).as_posix()}", "source": source, "path": str(p),
                             "label": p.parent.name if labels == "parent" and p.parent != root else None})
    if not rows:
        raise LungxrayError(f"no images ({', '.join(sorted({'.png', '.jpg', '.jpeg'}))}, ...) under {folders}")
    df = pd.DataFrame(rows)
    groups, report = find_groups(df, params, cache_path=cache_path, progress=progress, max_pixels=max_pixels)
    write_csv(out_csv, groups)
    return report
