"""What makes a checkpoint resumable: the code it was trained with is part of its fingerprint."""

from __future__ import annotations

import shutil

from conftest import REPO

from lungxray.checkpoint import code_fingerprint, library_versions, module_closure


def copy_package(tmp_path):
    dest = tmp_path / "lungxray"
    shutil.copytree(REPO / "src" / "lungxray", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_training_code_is_train_and_every_project_module_it_imports():
    closure = module_closure([REPO / "src" / "lungxray" / "train.py"])
    assert {"models", "preprocess", "imaging", "checkpoint"} <= set(closure)
    assert not {"fetch", "dedupe", "evaluate", "metrics", "compare", "register"} & set(closure)


def test_the_code_fingerprint_changes_with_the_training_and_model_code_only(tmp_path):
    package = copy_package(tmp_path)
    before = code_fingerprint(package)
    assert code_fingerprint(package) == before
    fetch = package / "fetch" / "manifest.py"
    fetch.write_text(fetch.read_text() + "\n# not imported by training\n")
    assert code_fingerprint(package) == before
    for module in ("models.py", "handcrafted.py", "weights_file.py", "train.py", "train_loop.py", "train_settings.py",
                   "preprocess.py"):
        path = package / module
        original = path.read_text()
        path.write_text(original + "\nX = 1\n")
        assert code_fingerprint(package) != before, module
        path.write_text(original)
    assert code_fingerprint(package) == before


def test_library_versions_name_torch_timm_and_torchvision():
    versions = library_versions()
    assert set(versions) == {"torch", "timm", "torchvision"} and all(versions.values())
