"""The issue-14 recipes on the shared-data profile, in-source and leave-one-source-out, 3 seeds each.

Data: the processed folder the pipeline builds from ../shared/data with ``configs/shared-data.yaml`` (after
``make run CONFIG=configs/shared-data.yaml``, or ``dvc repro preprocess`` with that profile as params.yaml): the
deduplicated, leakage-free split at 64 px. Every model is the profile's train section (Adam, lr 1e-3, cosine, weighted
loss, batch 64) for cnn5, run longer than CI's 2 epochs (``--epochs``, default 8), with the project's own
``train_model``; the selection rule is the project's (best val loss; with ``ema`` the better on val of raw and
averaged weights).

Training recipes: ``plain`` and ``ema`` (``train.weight_averaging: ema``, decay 0.99: the profile's 79 steps an
epoch are fewer than PneumoniaMNIST's). Scoring recipes, from the same models: ``plain`` (softmax), ``temperature``
(T fitted on the val split the model was selected on, applied to the scored split), ``tta`` (``flips_shifts``),
``ensemble`` (the mean probability of the 3 seeds).

* **in-source**: trained on the profile's train split; scored on val (what would choose) and on test (reported only).
* **leave-one-source-out**: the external stage's folds (:func:`lungxray.external.folds.make_fold`: every source with
  300+ kept images held out in turn, no image sharing a split unit with it trained on); scored on the held-out
  source.

Figures: accuracy, macro recall (the profile's promotion metric), macro AUC over the classes present, ECE and NLL
(:func:`lungxray.evaluate.metrics.compute_metrics`). Mean ± sd over seeds; the ensemble is one row.

    python benchmarks/recipes_shared.py --processed data/processed --work /tmp/recipes_shared [--epochs 8]
        [--only in-source|loso] [--reverse] [--table]   # <work>/<setting>/<recipe>_s<seed>/result.json; the table
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from seed_stats import mean_sd

from lungxray.core.config import parse_sections, read_params_file
from lungxray.data.preprocess import load_split
from lungxray.evaluate.metrics import EvaluateParams, compute_metrics
from lungxray.evaluate.tta import tta_proba
from lungxray.external.folds import kept_index, make_fold, source_counts, write_fold
from lungxray.models.calibration import fit_temperature
from lungxray.models.inference import softmax_t
from lungxray.models.trained import load_trained_model
from lungxray.train.fit import train_model
from lungxray.train.settings import TrainParams

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "shared-data.yaml"
RECIPES = {"plain": {}, "ema": {"weight_averaging": "ema", "ema_decay": 0.99}}
SEEDS = (0, 1, 2)
KEYS = ("accuracy", "macro_recall", "macro_auc", "ece", "log_loss")
EVAL = EvaluateParams(bootstrap=0)


def train_params(work: Path, recipe: str, seed: int, epochs: int) -> TrainParams:
    """The profile's train section for cnn5, ``epochs`` long, the recipe's options, an MLflow store under ``work``."""
    raw = read_params_file(PROFILE)["train"]
    tp = parse_sections({"train": raw}, {"train": TrainParams}, str(PROFILE)).train
    mlflow = tp.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{work}/mlflow.db",
                                          "artifact_dir": str(work / "artifacts"), "experiment": "recipes_shared"})
    return tp.model_copy(update={"models": ["cnn5"], "epochs": epochs, "early_stopping_patience": epochs,
                                 "seed": seed, "device": "cpu", "torch_threads": 1, "mlflow": mlflow,
                                 **RECIPES[recipe]})


def scored(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    m = compute_metrics(y, probs, classes, EVAL)
    return {k: m.get(k) for k in KEYS}


def score_model(model_dir: Path, data: Path, splits: list[str], classes: list[str]) -> dict:
    """{split: {scoring recipe: figures}}, T, and the labels and probabilities kept for the seed ensemble."""
    model = load_trained_model(model_dir / "model.pt")
    data_of = {s: load_split(data, s) for s in dict.fromkeys(["val", *splits])}  # (images, labels), read once
    logits = {s: model.logits(x, batch_size=256) for s, (x, _) in data_of.items()}
    t = fit_temperature(logits["val"], data_of["val"][1])
    out, probs = {}, {}
    for split in splits:
        x, y = data_of[split]
        p = {"plain": softmax_t(logits[split]), "temperature": softmax_t(logits[split], t),
             "tta": tta_proba(model, x, "flips_shifts", batch_size=256, temperature=1.0)}
        out[split] = {k: scored(y, v, classes) for k, v in p.items()}
        probs[split] = {k: v.tolist() for k, v in p.items()}
    return {"scores": out, "temperature": t, "probs": probs,
            "labels": {s: data_of[s][1].tolist() for s in splits}}


def claim(out: Path) -> bool:
    """Whether this process may train ``out``: no other live process of this script has claimed it (two processes,
    one with ``--reverse``, share the work; a dead claimer's run is taken over and resumes from its checkpoint)."""
    out.mkdir(parents=True, exist_ok=True)
    f = out / "claim.pid"
    try:
        fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(f.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            f.write_text(str(os.getpid()))
            return True
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def run_one(setting: str, data: Path, splits: list[str], recipe: str, seed: int, work: Path, epochs: int,
            classes: list[str]) -> dict | None:
    out = work / setting / f"{recipe}_s{seed}"
    done = out / "result.json"
    if done.exists():  # a rerun resumes: finished models are not trained again
        return json.loads(done.read_text())
    if not claim(out):
        return None
    tp = train_params(work, recipe, seed, epochs)
    t = train_model("cnn5", tp, data, out / "model", out / "metrics", progress=False)
    res = {"setting": setting, "recipe": recipe, "seed": seed, "best_epoch": t["best_epoch"],
           "seconds_per_epoch": t["seconds_per_epoch"], **score_model(out / "model", data, splits, classes)}
    done.write_text(json.dumps(res))
    print("RESULT", setting, recipe, seed, json.dumps(res["scores"])[:300], flush=True)
    return res


def settings(processed: Path, work: Path, only: str | None) -> list[tuple[str, Path, list[str]]]:
    """(name, data folder, scored splits): in-source, then one fold per source with 300+ kept images."""
    out = [] if only == "loso" else [("in-source", processed, ["val", "test"])]
    if only == "in-source":
        return out
    index = kept_index(processed)
    for source, n in source_counts(index).items():
        if n >= 300:
            data = work / f"loso-{source}" / "data"
            if not (data / "stats.json").exists():
                write_fold(make_fold(index, source), processed, data)
            out.append((f"loso-{source}", data, ["test"]))
    return out


def run_all(processed: Path, work: Path, epochs: int, only: str | None, reverse: bool = False) -> None:
    classes = json.loads((processed / "stats.json").read_text())["classes"]
    runs = [(st, recipe, seed) for st in settings(processed, work, only) for recipe in RECIPES for seed in SEEDS]
    for (setting, data, splits), recipe, seed in (runs[::-1] if reverse else runs):
        run_one(setting, data, splits, recipe, seed, work, epochs, classes)


def kept_weights(result: Path) -> str:
    """Which weights the train stage kept in model.pt: raw or the averaged (EMA) ones."""
    import torch

    ck = torch.load(result.parent / "model" / "model.pt", map_location="cpu", weights_only=True)
    return str(ck.get("weights", "raw"))


def table(work: Path, classes: list[str]) -> str:
    lines = ["| setting | scored on | training | scoring | seeds | accuracy | macro recall | macro AUC | ECE | NLL |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for setting_dir in sorted(work.glob("*/"), key=lambda d: (d.name != "in-source", d.name)):
        for recipe in RECIPES:
            done = sorted(setting_dir.glob(f"{recipe}_s*/result.json"))
            runs = [json.loads(p.read_text()) for p in done]
            if not runs:
                continue
            training = recipe if recipe == "plain" else f"{recipe} (kept: {', '.join(map(kept_weights, done))})"
            for split in runs[0]["scores"]:
                for scoring in runs[0]["scores"][split]:
                    cells = [mean_sd([r["scores"][split][scoring][k] for r in runs], 3) for k in KEYS]
                    lines.append(f"| {setting_dir.name} | {split} | {training} | {scoring} | {len(runs)} | "
                                 + " | ".join(cells) + " |")
                y = np.asarray(runs[0]["labels"][split])
                for scoring in ("plain", "tta") if len(runs) > 1 else ():
                    ens = scored(y, np.mean([np.asarray(r["probs"][split][scoring]) for r in runs], 0), classes)
                    lines.append(f"| {setting_dir.name} | {split} | {recipe} | **ensemble of the seeds** "
                                 f"({scoring}) | {len(runs)} | " + " | ".join(
                                     "" if ens[k] is None else f"{ens[k]:.3f}" for k in KEYS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--processed", type=Path, default=REPO / "data" / "processed")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recipes_shared"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--only", choices=["in-source", "loso"])
    ap.add_argument("--reverse", action="store_true", help="take the runs in reverse order (a second process)")
    ap.add_argument("--table", action="store_true", help="only print the table of what has run")
    a = ap.parse_args()
    if not (a.processed / "stats.json").exists():
        raise SystemExit(f"no processed data at {a.processed}: run `make run CONFIG=configs/shared-data.yaml` "
                         f"(or `dvc repro preprocess` with that profile) first")
    a.work.mkdir(parents=True, exist_ok=True)
    cls = json.loads((a.processed / "stats.json").read_text())["classes"]
    if not a.table:
        run_all(a.processed, a.work, a.epochs, a.only, a.reverse)
    print(table(a.work, cls))
