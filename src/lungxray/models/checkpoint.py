"""Training checkpoints (``models/<model>/checkpoint.pt``) and the rule that decides whether one may be resumed.

* A checkpoint records four fingerprints: the model's resolved settings (the shared ``train`` keys with its own
  ``model_options`` applied), the data version, the code (the source of :mod:`lungxray.train` and of every project
  module it imports, directly or not: :func:`code_fingerprint`) and the torch/timm/torchvision versions.
* A run resumes a checkpoint only when all four are unchanged and the checkpoint is not marked complete. A finished run
  marks its checkpoint complete, so a later run (after any change DVC saw, or ``dvc repro -f``) trains from scratch
  instead of "retraining" in zero epochs and re-exporting the old weights.
* A caller may instead reuse a finished run as it is (the external stage's fold models after an interruption,
  :func:`finished_run`): only when its checkpoint is marked complete with the same four fingerprints.
* A checkpoint that cannot be resumed (unreadable, of another configuration, or whose weights do not fit the model)
  is set aside as ``checkpoint.stale.pt`` (replacing an older one) with a one-line message naming what changed, and
  training starts from scratch: never a traceback.
* A fingerprint is the first 16 hex digits of the SHA-256 of the object as key-sorted JSON (:func:`fingerprint`); the
  data version, those of the SHA-256 of the processed data's ``index.csv`` and ``stats.json`` (:func:`data_version`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterable

import torch

from lungxray.core.io import atomic_path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/lungxray
STALE_NAME = "checkpoint.stale.pt"
LIBRARIES = ("torch", "timm", "torchvision")

# --- the code and the libraries a model is trained with ---------------------------------------------------------------


def module_file(name: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The source file of the project module ``name``: ``"train"`` -> ``train.py``, a package ``"dedupe"`` ->
    ``dedupe/__init__.py``, ``"dedupe.groups"`` -> ``dedupe/groups.py``."""
    base = Path(package_dir).joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def project_imports(path: Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Names of the ``lungxray`` modules that the Python file ``path`` imports anywhere in it (top level or inside
    functions; absolute or relative imports), as dotted names without the package prefix (``"train"``,
    ``"dedupe.groups"``). Importing a module of a sub-package imports the sub-package too (its ``__init__``)."""
    path, package_dir = Path(path), Path(package_dir)
    try:  # the package a relative import starts from: the file's folder, as dotted parts
        here = ["lungxray", *path.resolve().parent.relative_to(package_dir.resolve()).parts]
    except ValueError:
        here = None
    found: set[str] = set()

    def add(dotted: str) -> None:
        parts = dotted.split(".")
        if parts[0] != "lungxray":
            return
        for k in range(2, len(parts) + 1):
            name = ".".join(parts[1:k])
            if not module_file(name, package_dir).is_file():
                return
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only meaningful inside the package
                if here is None or node.level > len(here):
                    continue
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            add(base)
            for alias in node.names:  # `from lungxray.core import schema` / `from . import evaluate`: modules too
                add(f"{base}.{alias.name}")
    return found


def module_closure(files: Iterable[Path], package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every ``lungxray`` module that ``files`` import, directly or through other project modules (sorted names; the
    file of each: :func:`module_file`)."""
    package_dir = Path(package_dir)
    seen: set[str] = set()
    todo = [Path(f) for f in files]
    while todo:
        for name in project_imports(todo.pop(), package_dir) - seen:
            seen.add(name)
            todo.append(module_file(name, package_dir))
    return sorted(seen)


def code_fingerprint(package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of the source of the ``train`` package and of every project module it imports (models, preprocess's
    loader, ...): any edit of the code that trains or defines a model changes it."""
    package_dir = Path(package_dir)
    train = sorted((package_dir / "train").rglob("*.py"))
    own = {".".join(f.relative_to(package_dir).with_suffix("").parts).removesuffix(".__init__") for f in train}
    h = hashlib.sha256()
    for name in sorted(own | set(module_closure(train, package_dir))):
        h.update(f"{name}\0".encode() + module_file(name, package_dir).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define the models and their numerics."""
    import timm
    import torchvision

    return {"torch": torch.__version__, "timm": timm.__version__, "torchvision": torchvision.__version__}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


# --- fingerprints of the settings and the data ------------------------------------------------------------------------


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_version(processed: Path) -> str:
    h = hashlib.sha256()
    for name in ("index.csv", "stats.json"):
        h.update((processed / name).read_bytes())
    return h.hexdigest()[:16]


# --- resume or set aside ----------------------------------------------------------------------------------------------

FINGERPRINT_NAMES = {"settings": "settings", "data": "data", "code": "code", "libraries": "library versions"}


def set_aside(path: Path, reason: str) -> str:
    """Rename an unusable checkpoint to ``checkpoint.stale.pt`` beside it; return the one-line message to show."""
    path = Path(path)
    stale = path.with_name(STALE_NAME)
    os.replace(path, stale)
    return f"set aside {path} as {stale.name} ({reason}); training from scratch"


def _changed(ck: dict, fingerprints: dict[str, str]) -> list[str]:
    old = ck.get("fingerprints")
    if not isinstance(old, dict):
        return ["configuration (a checkpoint of an older version of lungxray)"]
    return [FINGERPRINT_NAMES[k] for k in fingerprints if old.get(k) != fingerprints[k]]


def read_checkpoint(path: Path, fingerprints: dict[str, str]) -> tuple[dict | None, str | None]:
    """(the checkpoint to resume, None) or (None, a one-line message why training starts from scratch; None when there
    is no checkpoint). Unusable checkpoints are set aside."""
    path = Path(path)
    if not path.exists():
        return None, None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is set aside, never a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return None, set_aside(path, f"unreadable: {first}")
    if isinstance(ck, dict) and ck.get("complete"):
        return None, f"{path} is of a finished run; training from scratch"
    if not isinstance(ck, dict) or not {"epoch", "model", "optimizer", "history", "best"} <= set(ck):
        return None, set_aside(path, "not a lungxray training checkpoint")
    changed = _changed(ck, fingerprints)
    if changed:
        return None, set_aside(path, f"trained with other {', '.join(changed)}")
    return ck, None


def finished_run(path: Path, fingerprints: dict[str, str]) -> dict | None:
    """The record of a finished run (what :func:`mark_complete` wrote) when its fingerprints are all equal to
    ``fingerprints``, else None (no checkpoint, an unfinished or unreadable one, or one of another configuration).
    Nothing is set aside: a run that is not reused reads the checkpoint with :func:`read_checkpoint`."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: not reusable (read_checkpoint sets it aside)
        return None
    if not isinstance(ck, dict) or not ck.get("complete") or _changed(ck, fingerprints):
        return None
    return ck


def mark_complete(path: Path, fingerprints: dict[str, str], summary: dict) -> None:
    """Replace the checkpoint by a small record of the finished run (no weights: they are in model.pt and best.pt),
    so that it is never resumed."""
    with atomic_path(path) as tmp:
        torch.save({"complete": True, "fingerprints": fingerprints, **summary}, tmp)
