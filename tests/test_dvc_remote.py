"""Data and models shared through a DVC remote: after `dvc pull` in a fresh clone, `dvc repro` has nothing to redo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_repo_tree

GIT = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
ALWAYS_CHANGED = {"fetch", "train_settings"}  # they look at the sources / library versions again on every run


def run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the copy's code runs
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def small_profile(repo: Path) -> None:
    """The shared-data profile cut down to one folder source (in the repository, tracked by `dvc add`), two classes,
    32 px and one epoch of cnn5."""
    params = yaml.safe_load((REPO / "configs" / "shared-data.yaml").read_text())
    kermany = params["fetch"]["sources"][0]
    params["fetch"].update(classes=["normal", "pneumonia"], workers=1, sources=[
        {"name": "cxr", "kind": "folder", "path": "data/sources/cxr", "labels": {"NORMAL": "normal",
                                                                                "PNEUMONIA": "pneumonia"},
         "patient": kermany["patient"]}])
    params["dedupe"].update(source_preference=[], workers=1)
    params["validate"].update(min_per_class=3, required_classes=["normal", "pneumonia"])
    params["preprocess"]["image_size"] = 32
    params["train"].update(models=["cnn5"], epochs=1, batch_size=8, model_options={})
    params["ensemble"].update(enabled=False)  # one model (the stage still writes its outputs, saying so)
    params["evaluate"]["bootstrap"] = 20
    params["promote"]["bootstrap"] = 20
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(repro_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", repro_output))


@pytest.mark.slow
@pytest.mark.shared
def test_after_dvc_pull_in_a_fresh_clone_dvc_repro_has_nothing_to_redo(shared_data, tmp_path):
    repo, remote, fresh = tmp_path / "repo", tmp_path / "remote", tmp_path / "fresh"
    repo.mkdir()
    copy_repo_tree(repo)
    for name in (".gitignore", ".dvcignore", "data/.gitignore", "mlruns/.gitignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    for label in ("NORMAL", "PNEUMONIA"):  # raw images: a few real X-rays, shared through DVC
        (repo / "data/sources/cxr" / label).mkdir(parents=True)
        for f in sorted((shared_data / "jtiptj_test" / label).iterdir())[:14]:
            shutil.copy2(f, repo / "data/sources/cxr" / label / f.name)
    small_profile(repo)
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "add", "-q", "data/sources/cxr")
    run(repo, "dvc", "remote", "add", "-d", "team", str(remote))
    run(repo, "dvc", "repro")
    run(repo, *GIT, "add", "-A")
    run(repo, *GIT, "commit", "-q", "-m", "pipeline run")
    run(repo, "dvc", "push")

    run(tmp_path, "git", "clone", "-q", str(repo), str(fresh))
    assert not (fresh / "data/processed").exists() and not (fresh / "models").exists()
    run(fresh, "dvc", "pull")
    for f in ("data/sources/cxr/NORMAL", "data/processed/train.npy", "models/cnn5/model.pt",
              "metrics/cnn5/predictions_val.csv", "reports/leaderboard.png"):
        assert (fresh / f).exists(), f"{f} did not come back with dvc pull"
    status = json.loads(run(fresh, "dvc", "status", "--json"))
    assert set(status) <= ALWAYS_CHANGED and all(v == ["always changed"] for v in status.values()), status
    assert ran_stages(run(fresh, "dvc", "repro", "--dry")) <= ALWAYS_CHANGED
    assert ran_stages(run(fresh, "dvc", "repro")) == ALWAYS_CHANGED  # they rerun, and reproduce what was pulled:
    assert run(fresh, "git", "status", "--porcelain") == ""
    assert json.loads(run(fresh, "dvc", "status", "--json")) == status
