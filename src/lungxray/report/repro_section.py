"""Section 7 of the report: what reproduces the run (git commit, the dvc.lock hashes of the data and the models, the
params, the library versions recorded at training and at report time, the seeds, the device, the commands) and where
it is tracked (the MLflow run, the registered model version)."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from lungxray.core import schema
from lungxray.report.page import absent, esc, evidence, table
from lungxray.report.run import Run

__all__ = ["repro_section", "git_commit", "LIBRARIES"]

LIBRARIES = ("lungxray", "torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "mlflow", "dvc")


def git_commit(root: Path) -> tuple[str | None, bool]:
    """The commit checked out at ``root`` and whether tracked files differ from it (None when not a git work tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None, False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=60)
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def _lock_rows(run: Run) -> list[list[str]]:
    """``(stage, path, md5)`` of every data and model output in dvc.lock."""
    lock = yaml.safe_load(run.path("dvc.lock").read_text()) or {}
    rows = []
    for stage, s in (lock.get("stages") or {}).items():
        for out in s.get("outs") or []:
            path = str(out.get("path", ""))
            if path.startswith(("data/", "models/")) and out.get("md5"):
                rows.append([esc(stage), f"<code>{esc(path)}</code>", f"<code>{esc(out['md5'])}</code>"])
    return rows


def _seeds(params: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in (params or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _seeds(v, key + ".")
        elif "seed" in str(k).lower():
            out.append((key, v))
    return out


def _training_record(run: Run) -> tuple[dict, dict]:
    """The champion's (first member's, for the ensemble) train.json and settings file."""
    members = run.leaderboard[run.champion].get("ensemble_of")
    model = members.split(",")[0].strip() if members else run.champion
    train = run.path(schema.model_metrics_dir(model) / "train.json")
    settings = run.path(schema.train_settings_file(model))
    return (json.loads(train.read_text()) if train.is_file() else {},
            json.loads(settings.read_text()) if settings.is_file() else {})


def repro_section(run: Run) -> str:
    commit, dirty = git_commit(run.root)
    out = (f"<p>Git commit: <code>{esc(commit or 'unknown (not a git work tree)')}</code>"
           + (" <strong>with uncommitted changes</strong>" if dirty else "") + ".</p>")
    if run.path("dvc.lock").is_file():
        out += table(["stage", "output", "md5 (dvc.lock)"], _lock_rows(run),
                     caption="The data and models of this run, as DVC recorded them (dvc.lock)")
    else:
        out += absent("the dvc.lock hashes", "dvc.lock is missing: the outputs were not made by `dvc repro`")
    train, settings = _training_record(run)
    recorded = settings.get("libraries") or {}
    now = {}
    for lib in LIBRARIES:
        try:
            now[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            now[lib] = "-"
    out += evidence("ev-libraries", table(["library", "at training (models/settings)", "building this report"],
                 [[esc(k), esc(recorded.get(k, "-")), esc(v)] for k, v in now.items()]
                 + [["python", "-", esc(platform.python_version())]], caption="Library versions"))
    out += table(["setting", "value"], [[esc(k), esc(v)] for k, v in _seeds(run.params)],
                 caption="Seeds (params.yaml)")
    out += (f"<p>Trained on device <code>{esc(train.get('device', '-'))}</code>, precision "
            f"<code>{esc(train.get('precision', '-'))}</code>, {esc(train.get('processes', 1))} process(es); report "
            f"built on {esc(platform.platform())}.</p>")
    after = run.promotion.get("champion_after") or {}
    out += (f"<p>MLflow: training run <code>{esc(train.get('mlflow_run_id', '-'))}</code>; registered model "
            f"<code>{esc(run.promotion.get('registered_model'))}</code> version {esc(after.get('version', '-'))} "
            f"(alias <code>champion</code>); load it with <code>{esc(run.promotion.get('load_with', '-'))}</code>.</p>")
    out += ("<p>Reproduce:</p><pre>git checkout " + esc(commit or "<commit>") + "\nmake setup\n"
            "dvc pull            # the cached data and models of this run (when a DVC remote is set)\n"
            "dvc repro           # reruns only what changed; `dvc status` lists it\n"
            "lungxray report     # this page again</pre>")
    if run.params:
        out += evidence("ev-params", "<details><summary>params.yaml of this run</summary><pre>"
                        + esc(yaml.safe_dump(run.params, sort_keys=False)) + "</pre></details>")
    return evidence("ev-repro", out)
