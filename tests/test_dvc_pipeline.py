"""dvc.yaml against the code: every stage depends on the modules it runs, and each model on its own settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lungxray.models.checkpoint import module_closure, module_file

from conftest import REPO, copy_repo_tree

PACKAGE = REPO / "src" / "lungxray"
NOT_LISTED = {"core.errors", "core.io", "core.schema", "core.stage"}  # leaf helpers whose changes never change a
# result (STYLE.md)


def stages() -> dict[str, dict]:
    out = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        out[name] = stage.get("do", stage)  # foreach stages: the template
    return out


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_stage_lists_every_project_module_it_imports_in_its_deps(name):
    stage = stages()[name]
    script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
    deps = {d for d in stage.get("deps", []) if isinstance(d, str)}
    assert script in deps
    imported = {module_file(m, PACKAGE).relative_to(REPO).as_posix()
                for m in module_closure([REPO / script], PACKAGE) if m not in NOT_LISTED}
    listed = {d for d in deps if d.startswith("src/")}
    assert not imported - listed, f"{name} imports modules its deps do not list: {sorted(imported - listed)}"
    assert all((REPO / d).exists() for d in listed), f"{name} lists modules that do not exist"


def params_dvc_reads() -> set[str]:
    """Every params key a stage of dvc.yaml lists (``train``, ``fetch.classes``, ...)."""
    keys = set()
    for stage in stages().values():
        for p in stage.get("params", []):
            keys |= set(p) if isinstance(p, dict) else {p}
    return keys


@pytest.mark.parametrize("profile", ["params.yaml", *sorted(p.relative_to(REPO).as_posix()
                                                            for p in (REPO / "configs").glob("*.yaml")
                                                            if not p.name.startswith("metrics-baseline"))])
def test_every_profile_has_every_params_section_the_stages_read(profile):
    # dvc repro stops on a params key missing from params.yaml, which `make run CONFIG=...` makes of the profile
    data = yaml.safe_load((REPO / profile).read_text())
    missing = sorted(k for k in params_dvc_reads() if k.split(".")[0] not in data)
    assert not missing, f"{profile} lacks {missing}: dvc repro would stop on it"


def test_the_import_closure_follows_imports_inside_functions_and_relative_imports():
    closure = module_closure([REPO / "stages" / "compare.py"], PACKAGE)
    assert {"compare.leaderboard", "evaluate.metrics", "compare.promote", "core.config", "train.settings",
            "models.architectures"} <= set(closure)


def test_the_import_closure_follows_a_package_into_its_modules_and_names_their_files(tmp_path):
    package = tmp_path / "lungxray"
    (package / "steps").mkdir(parents=True)
    files = {"errors.py": "", "io.py": "from .errors import E\n", "unused.py": "",
             "steps/__init__.py": "from .first import run\n",
             "steps/first.py": "from ..io import write\nfrom . import second\n",
             "steps/second.py": "def f():\n    from lungxray.steps.third import g\n",
             "steps/third.py": "from .. import errors\n"}
    for name, text in files.items():
        (package / name).write_text(text)
    script = tmp_path / "stage.py"
    script.write_text("from lungxray.steps import run\n")
    closure = module_closure([script], package)
    assert closure == ["errors", "io", "steps", "steps.first", "steps.second", "steps.third"]
    assert module_file("steps", package) == package / "steps" / "__init__.py"
    assert module_file("steps.first", package) == package / "steps" / "first.py"
    assert module_file("io", package) == package / "io.py"


def test_the_dvc_metrics_are_the_per_model_headline_files_only():
    """`dvc metrics show` prints one table whose columns are the union of every metrics file's keys: only the compact
    headline files are metrics; the full evaluation and the stage summaries are plain outputs."""
    declared = {next(iter(m)) if isinstance(m, dict) else m for s in stages().values() for m in s.get("metrics", [])}
    assert declared == {"metrics/${item}/headline_val.json", "metrics/${item}/headline_test.json",
                        "metrics/ensemble/headline_val.json", "metrics/ensemble/headline_test.json"}
    outs = {next(iter(o)) if isinstance(o, dict) else o for s in stages().values() for o in s.get("outs", [])}
    assert {"metrics/${item}/eval.json", "metrics/${item}/train.json", "reports/leaderboard.json"} <= outs


def test_the_files_the_ensemble_reads_of_a_member_are_evaluate_outputs_and_deps_of_its_record():
    from lungxray.ensemble.members import MEMBER_FILES

    def outs(stage: dict) -> set[str]:
        return {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])}

    s = stages()
    predictions = [f"predictions_{split}.csv" for split in ("val", "test", "test_official")]
    assert set(predictions) <= set(MEMBER_FILES)
    assert {f"metrics/${{item}}/{f}" for f in predictions} <= outs(s["evaluate"])
    assert {f"metrics/${{item}}/{f}" for f in MEMBER_FILES} <= set(s["ensemble_member"]["deps"])
    assert {f"metrics/ensemble/{f}" for f in predictions} <= outs(s["ensemble"])


def dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the copy's code runs
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def trained_scratch_repo(tmp_path: Path, models: list[str]) -> tuple[Path, dict]:
    """A scratch repository whose ``train@<model>`` stages are recorded as done (stand-in outputs, no training)."""
    copy_repo_tree(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    params_file = tmp_path / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"]["models"] = list(models)
    params_file.write_text(yaml.safe_dump(params))
    dvc(tmp_path, "repro", "--single-item", "train_settings")
    (tmp_path / "data/processed").mkdir(parents=True)
    (tmp_path / "data/processed/stats.json").write_text("{}")
    for model in models:  # stand-ins for trained models: record the stages as done, without training
        (tmp_path / "models" / model).mkdir(parents=True)
        (tmp_path / "models" / model / "model.pt").write_text(model)
        for name in ("train.json", "history.csv", "training_curve.png"):
            (tmp_path / "metrics" / model).mkdir(parents=True, exist_ok=True)
            (tmp_path / "metrics" / model / name).write_text(model)
    dvc(tmp_path, "commit", "-f", *(f"train@{m}" for m in models))
    assert "up to date" in dvc(tmp_path, "status", *(f"train@{m}" for m in models))
    return params_file, params


@pytest.mark.slow
def test_changing_one_models_options_or_adding_a_model_leaves_the_other_models_trained(tmp_path):
    """A real `dvc status` in a scratch repository: train@<model> depends on its own resolved settings only."""
    params_file, params = trained_scratch_repo(tmp_path, ["cnn5", "resnet18"])
    params["train"]["model_options"]["cnn5"]["lr"] = 0.01
    params["train"]["models"].append("mobilenetv2")
    params_file.write_text(yaml.safe_dump(params))
    dvc(tmp_path, "repro", "--single-item", "train_settings")
    status = dvc(tmp_path, "status", "train@cnn5", "train@resnet18")
    assert "train@cnn5" in status and "train@resnet18" not in status


@pytest.mark.slow
def test_an_edit_to_gradcam_or_the_predict_command_leaves_every_trained_model_up_to_date(tmp_path):
    """A real `dvc status` in a scratch repository (issue 21): serving, Grad-CAM and the command line are no code of
    the train stage, so editing them retrains nothing; an edit to the training loop does."""
    trained_scratch_repo(tmp_path, ["cnn5", "resnet18"])
    package = tmp_path / "src" / "lungxray"
    for edited in ("evaluate/gradcam.py", "serve/predict.py", "serve/predictor.py", "cli/commands.py",
                   "registry/register.py"):
        path = package / edited
        path.write_text(path.read_text() + "\nOVERLAY_COLOUR = 'magma'  # an edit\n")
    assert "up to date" in dvc(tmp_path, "status", "train@cnn5", "train@resnet18")
    loop = package / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\n# an edit to training\n")
    status = dvc(tmp_path, "status", "train@cnn5", "train@resnet18")
    assert "train@cnn5" in status and "train@resnet18" in status


def external_scratch_repo(tmp_path, models: list[str], write_metrics) -> tuple:
    """A scratch DVC repository whose external stage is recorded as finished (stand-in outputs, nothing trained):
    ``train.models`` = ``models``, in-source metrics written by ``write_metrics(metrics_dir)``, train_settings and
    external_plan run (the folds must train cnn5). Returns (params file, params, the plan's text)."""
    copy_repo_tree(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    params_file = tmp_path / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"]["models"] = models
    params_file.write_text(yaml.safe_dump(params))
    write_metrics(tmp_path / "metrics")
    dvc(tmp_path, "repro", "--single-item", "train_settings")
    dvc(tmp_path, "repro", "--single-item", "external_plan")
    plan = (tmp_path / "reports/external_plan.json").read_text()
    assert json.loads(plan)["models"] == ["cnn5"]
    (tmp_path / "data/processed").mkdir(parents=True)
    (tmp_path / "data/processed/stats.json").write_text("{}")
    (tmp_path / "models/external").mkdir(parents=True)
    for name in ("models/external/folds.json", "reports/external.md", "reports/external.png",
                 "reports/external.json"):  # stand-ins for a finished external stage: recorded without training
        (tmp_path / name).write_text(name)
    dvc(tmp_path, "commit", "-f", "external")
    return params_file, params, plan


@pytest.mark.slow
def test_a_change_to_the_ensembles_outputs_leaves_the_external_fold_models_trained(tmp_path):
    """A real `dvc status` in a scratch repository: external depends on the plan (its architectures and their
    in-source figures), not on all of metrics/, so only a change that moves the plan makes it run again."""
    from helpers.multisource import write_in_source_metrics

    def write(metrics):
        write_in_source_metrics(metrics, "cnn5", 0.8, 100, by_source={"alpha": {"macro_recall": 0.7}})

    params_file, params, plan = external_scratch_repo(tmp_path, ["cnn5"], write)
    assert "up to date" in dvc(tmp_path, "status", "external")

    (tmp_path / "metrics/ensemble").mkdir()
    (tmp_path / "metrics/ensemble/eval.json").write_text('{"val": {"macro_recall": 0.99}}')
    (tmp_path / "metrics/cnn5/history.csv").write_text("epoch\n1\n")
    assert "external_plan" in dvc(tmp_path, "status", "external_plan")
    dvc(tmp_path, "repro", "--single-item", "external_plan")
    assert (tmp_path / "reports/external_plan.json").read_text() == plan
    assert "up to date" in dvc(tmp_path, "status", "external")

    write_in_source_metrics(tmp_path / "metrics", "cnn5", 0.8, 100, by_source={"alpha": {"macro_recall": 0.6}})
    dvc(tmp_path, "repro", "--single-item", "external_plan")
    status = dvc(tmp_path, "status", "external")
    assert "up to date" not in status and "reports/external_plan.json" in status


@pytest.mark.slow
def test_changing_the_options_of_a_model_the_folds_do_not_train_leaves_the_external_fold_models_trained(tmp_path):
    """A real `dvc status` in a scratch repository: the external stage depends on the settings of the architectures
    its folds train (carried by its plan), not on the whole train section, so changing another model's options
    retrains only that model; changing those of a fold architecture makes it run again."""
    from helpers.multisource import write_in_source_metrics

    def write(metrics):  # cnn5: row 1 and the smallest, so the folds train cnn5
        write_in_source_metrics(metrics, "cnn5", 0.9, 100)
        write_in_source_metrics(metrics, "resnet18", 0.7, 10_000)

    params_file, params, plan = external_scratch_repo(tmp_path, ["cnn5", "resnet18"], write)
    assert "up to date" in dvc(tmp_path, "status", "external_plan", "external")

    params["train"]["model_options"]["resnet18"]["lr"] = 0.01
    params_file.write_text(yaml.safe_dump(params))
    assert "up to date" in dvc(tmp_path, "status", "external_plan", "external")
    dvc(tmp_path, "repro", "--single-item", "train_settings")
    dvc(tmp_path, "repro", "--single-item", "external_plan")
    assert (tmp_path / "reports/external_plan.json").read_text() == plan
    assert "up to date" in dvc(tmp_path, "status", "external")

    params["train"]["model_options"]["cnn5"]["lr"] = 0.01
    params_file.write_text(yaml.safe_dump(params))
    dvc(tmp_path, "repro", "--single-item", "train_settings")
    dvc(tmp_path, "repro", "--single-item", "external_plan")
    status = dvc(tmp_path, "status", "external")
    assert "up to date" not in status and "reports/external_plan.json" in status
