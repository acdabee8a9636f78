"""What makes a checkpoint resumable: the code it was trained with is part of its fingerprint."""

from __future__ import annotations

import shutil

import torch

from lungxray.models.checkpoint import code_fingerprint, library_versions, module_closure

from conftest import REPO


def copy_package(tmp_path):
    dest = tmp_path / "lungxray"
    shutil.copytree(REPO / "src" / "lungxray", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_training_code_is_train_and_every_project_module_it_imports():
    closure = set(module_closure(sorted((REPO / "src" / "lungxray" / "train").glob("*.py"))))
    assert {"models.architectures", "data.preprocess", "images.decode", "models.checkpoint"} <= closure
    assert not {m for m in closure if m.split(".")[0] in ("evaluate", "ensemble", "compare", "external", "serve",
                                                          "registry", "cli")}
    assert not {"data.fetch", "data.dedupe", "data.validate"} & closure


def test_the_code_fingerprint_changes_with_the_training_and_model_code_only(tmp_path):
    package = copy_package(tmp_path)
    before = code_fingerprint(package)
    assert code_fingerprint(package) == before
    for other in ("data/fetch/manifest.py", "evaluate/gradcam.py", "serve/predict.py", "registry/register.py"):
        path = package / other
        path.write_text(path.read_text() + "\n# not imported by training\n")
        assert code_fingerprint(package) == before, other
    for module in ("models/architectures.py", "models/handcrafted.py", "models/weights_file.py", "train/fit.py",
                   "train/loop.py", "train/settings.py", "data/preprocess.py"):
        path = package / module
        original = path.read_text()
        path.write_text(original + "\nX = 1\n")
        assert code_fingerprint(package) != before, module
        path.write_text(original)
    assert code_fingerprint(package) == before


def test_library_versions_name_torch_timm_and_torchvision():
    versions = library_versions()
    assert set(versions) == {"torch", "timm", "torchvision"} and all(versions.values())


def test_a_finished_run_is_reusable_only_with_the_same_four_fingerprints(tmp_path):
    from lungxray.models.checkpoint import finished_run, mark_complete

    fps = {"settings": "s", "data": "d", "code": "c", "libraries": "l"}
    path = tmp_path / "checkpoint.pt"
    assert finished_run(path, fps) is None  # no checkpoint
    torch.save({"epoch": 1, "fingerprints": fps, "model": {}, "optimizer": {}, "history": [], "best": {}}, path)
    assert finished_run(path, fps) is None  # an unfinished run is resumed, not reused
    mark_complete(path, fps, {"epoch": 2, "mlflow_run_id": "r"})
    assert finished_run(path, fps)["mlflow_run_id"] == "r"
    for key in fps:
        assert finished_run(path, {**fps, key: "other"}) is None, key
    path.write_bytes(b"torn")
    assert finished_run(path, fps) is None and path.exists()  # unreadable: not reused, and left for read_checkpoint
