"""PneumoniaMNIST (MedMNIST v2, 28x28) recipe search on the project's own train stage, tuned on VAL only.

Every configuration is trained with the unmodified ``lungxray.train.fit.train_model`` (which keeps the epoch of best
val loss as ``model.pt``) on a "processed" folder built here from ``pneumoniamnist_trainval.npz`` with the project's
own resize (``lungxray.data.preprocess.to_square``, i.e. what the preprocess stage would do). The official test split is
not used (nor available): ``test.npy`` is written empty.

Scored on val, from the saved model:
  * AUC: ``roc_auc_score`` on softmax P(pneumonia); ACC: argmax.
  * ``tta``: the same, averaged over the identity and 4 one-pixel shifts (evaluation only; not in the pipeline).
Each run appends one JSON line to ``$PM_ROOT/results.jsonl`` (default /tmp/pm) and saves its val probabilities,
so seed ensembles can be scored afterwards (``--ensemble``).

    python benchmarks/pneumoniamnist/explore.py --configs base_cnn5_32 r18_32 --seeds 0 1
    python benchmarks/pneumoniamnist/explore.py --table          # markdown table of everything run so far
    python benchmarks/pneumoniamnist/explore.py --ensemble cnn5_64   # mean-prob ensemble of its seeds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from lungxray.core.tracking import MlflowParams
from lungxray.data.preprocess import PreprocessParams, to_square
from lungxray.images.augment import AugmentParams
from lungxray.models.trained import load_trained_model
from lungxray.train.fit import train_model
from lungxray.train.settings import TrainParams

# ../shared/data beside the repository root (this file is benchmarks/pneumoniamnist/explore.py)
NPZ = Path(__file__).resolve().parents[3] / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
ROOT = Path(os.environ.get("PM_ROOT", "/tmp/pm"))
CLASSES = ["normal", "pneumonia"]

# ---------------------------------------------------------------------------------------------------------------------
# configurations: preprocess (image_size, resample) + TrainParams overrides

AUG_DEFAULT = dict()  # project default: 5 deg, 5 % shift, scale 0.95-1.05, brightness/contrast 0.1, no hflip
AUG_NONE = dict(enabled=False)
AUG_STRONG = dict(degrees=10, translate=0.1, scale=(0.9, 1.1), brightness=0.2, contrast=0.2)

BASE = dict(epochs=12, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=1e-4, scheduler="cosine",
            early_stopping_patience=12, imbalance="weighted_loss", augment=AUG_DEFAULT)
# (2 shared CPU cores: one torch thread per run is much faster than two under contention - 2 threads made the
#  per-image augmentation 10x slower - so runs use --threads 1 and two runs go side by side)


def cfg(model, size, resample="bilinear", **train):
    return {"model": model, "size": size, "resample": resample, "train": {**BASE, **train}}


CONFIGS: dict[str, dict] = {
    # --- model x image size (project-default augmentation, weighted loss, AdamW 1e-3 cosine, 12 epochs, bs 64)
    "cnn8_28": cfg("cnn8", 28),
    "cnn5_32": cfg("cnn5", 32),
    "cnn13_32": cfg("cnn13", 32),
    "r18_32": cfg("resnet18", 32),
    "cnn5_48": cfg("cnn5", 48),
    # --- variations on the winner
    "cnn5_32_noaug": cfg("cnn5", 32, augment=AUG_NONE),
    "cnn5_32_strong": cfg("cnn5", 32, augment=AUG_STRONG),
    "cnn5_32_noweight": cfg("cnn5", 32, imbalance="none"),
    "cnn5_32_lr3e-3": cfg("cnn5", 32, lr=3e-3),
    "cnn5_32_e20": cfg("cnn5", 32, epochs=20, early_stopping_patience=20),
    "cnn5_32_area": cfg("cnn5", 32, resample="area"),
    "cnn8_28_strong": cfg("cnn8", 28, augment=AUG_STRONG),
    "cnn8_28_e20": cfg("cnn8", 28, epochs=20, early_stopping_patience=20),
    "cnn8_28_noaug": cfg("cnn8", 28, augment=AUG_NONE),
    "cnn8_28_noweight": cfg("cnn8", 28, imbalance="none"),
    "cnn8_28_lr3e-3": cfg("cnn8", 28, lr=3e-3),
    "cnn8_32": cfg("cnn8", 32),
    "cnn8_28_lr3e-3_e20": cfg("cnn8", 28, lr=3e-3, epochs=20, early_stopping_patience=20),
    "cnn8_32_lr3e-3": cfg("cnn8", 32, lr=3e-3),
}




# ---------------------------------------------------------------------------------------------------------------------


def build_processed(size: int, resample: str) -> Path:
    """A processed folder in the preprocess stage's format (train/val from the npz, empty test)."""
    out = ROOT / "processed" / f"s{size}_{resample}"
    if (out / "stats.json").exists():
        return out
    d = np.load(NPZ)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    pp = PreprocessParams(image_size=size, aspect="pad", resample=resample)
    for split in ("train", "val", "test"):
        if split == "test":
            imgs, labels = np.zeros((0, size, size), np.uint8), np.zeros(0, np.int64)
        else:
            raw, labels = d[f"{split}_images"], d[f"{split}_labels"].ravel().astype(np.int64)
            imgs = np.stack([to_square(Image.fromarray(a, mode="L"), size, pp.aspect, pp.resample) for a in raw])
        np.save(out / f"{split}.npy", imgs)
        rows += [{"split": split, "row": i, "id": f"{split}/{i}", "label": CLASSES[l], "label_idx": int(l),
                  "source": "pneumoniamnist"} for i, l in enumerate(labels)]
    train = np.load(out / "train.npy").astype(np.float64) / 255.0
    mean, std = float(train.mean()), float(train.std())
    pd.DataFrame(rows).to_csv(out / "index.csv", index=False, lineterminator="\n")
    (out / "stats.json").write_text(json.dumps({"classes": CLASSES, "image_size": size, "aspect": "pad",
                                                "mean": round(mean, 6), "std": round(std, 6), "splits": {}},
                                               indent=2))
    return out


def val_probs(model_pt: Path, processed: Path, tta: bool = False) -> np.ndarray:
    trained = load_trained_model(model_pt)
    model = trained.network
    x = torch.from_numpy(np.load(processed / "val.npy")).float().unsqueeze(1) / 255.0
    mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in (trained.mean, trained.std))
    x = ((x - mean) / std).expand(-1, 3, -1, -1)  # per channel (model.pt has 3 values)
    shifts = [(0, 0)] + ([(1, 0), (-1, 0), (0, 1), (0, -1)] if tta else [])
    out = []
    with torch.inference_mode():
        for dy, dx in shifts:
            xs = torch.roll(x, shifts=(dy, dx), dims=(2, 3)) if (dy or dx) else x
            p = torch.cat([torch.softmax(model(xs[i:i + 256]), 1) for i in range(0, len(xs), 256)])
            out.append(p[:, 1].numpy())
    return np.mean(out, 0)


TEST_NORMAL_SHARE = 234 / 624  # the official test split's class balance (published counts; val/train: ~26 %)


def scores(p: np.ndarray, y: np.ndarray) -> dict:
    """AUC, ACC, and "acc_t": the ACC val would give at the test split's class balance
    (TEST_NORMAL_SHARE * specificity + (1 - TEST_NORMAL_SHARE) * sensitivity), a guard against picking a recipe
    whose ACC rests on val's larger share of pneumonia."""
    pred = (p >= 0.5).astype(int)
    spec, sens = float((pred[y == 0] == 0).mean()), float((pred[y == 1] == 1).mean())
    return {"auc": float(roc_auc_score(y, p)), "acc": float((pred == y).mean()),
            "acc_t": TEST_NORMAL_SHARE * spec + (1 - TEST_NORMAL_SHARE) * sens, "spec": spec, "sens": sens}


def val_labels() -> np.ndarray:
    return np.load(NPZ)["val_labels"].ravel().astype(int)


def run(name: str, seed: int, threads: int) -> dict:
    c = CONFIGS[name]
    processed = build_processed(c["size"], c["resample"])
    tr = dict(c["train"])
    tr["augment"] = AugmentParams(**tr["augment"])
    if "num_workers" in TrainParams.model_fields:  # (the field is being reworked in src/; default is 0 anyway)
        tr["num_workers"] = 0
    params = TrainParams(models=[c["model"]], pretrained=False, seed=seed, device="cpu", torch_threads=threads,
                         mlflow=MlflowParams(tracking_uri=f"sqlite:///{ROOT}/mlflow.db",
                                             artifact_dir=str(ROOT / "art"), experiment="pm"),
                         **tr)
    out = ROOT / "runs" / f"{name}_s{seed}"
    if out.exists():  # always a fresh run (no resume of an old configuration)
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    m = train_model(c["model"], params, processed, out / "model", out / "metrics", progress=False)
    wall = time.perf_counter() - t0
    y = val_labels()
    p = val_probs(out / "model" / "model.pt", processed)
    pt = val_probs(out / "model" / "model.pt", processed, tta=True)
    np.save(out / "val_p.npy", p)
    np.save(out / "val_p_tta.npy", pt)
    s, st = scores(p, y), scores(pt, y)
    rec = {"config": name, "seed": seed, "model": c["model"], "size": c["size"], "resample": c["resample"],
           "train": {k: (v if k != "augment" else c["train"]["augment"]) for k, v in c["train"].items()},
           "wall_s": round(wall, 1), "s_per_epoch": round(m["seconds_per_epoch"], 2), "best_epoch": m["best_epoch"],
           "epochs_run": m["epochs_run"], "val_auc": round(s["auc"], 4), "val_acc": round(s["acc"], 4),
           "tta_auc": round(st["auc"], 4), "tta_acc": round(st["acc"], 4)}
    with open(ROOT / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print("RESULT", json.dumps(rec), flush=True)
    return rec


def ensemble(name: str) -> None:
    y = val_labels()
    for kind in ("val_p", "val_p_tta"):
        ps = sorted((ROOT / "runs").glob(f"{name}_s[0-9]*/{kind}.npy"))
        if ps:
            s = scores(np.mean([np.load(p) for p in ps], 0), y)
            print(f"{name} ensemble of {len(ps)} seeds ({kind}): AUC {s['auc']:.4f} ACC {s['acc']:.4f} "
                  f"ACC@test-balance {s['acc_t']:.4f}")


def table() -> None:
    recs = [json.loads(l) for l in open(ROOT / "results.jsonl")]
    y = val_labels()
    for r in recs:  # specificity / sensitivity / ACC at test balance, from the saved val probabilities
        s = scores(np.load(ROOT / "runs" / f"{r['config']}_s{r['seed']}" / "val_p.npy"), y)
        r.update(val_spec=s["spec"], val_sens=s["sens"], val_acc_t=s["acc_t"])
    df = pd.DataFrame(recs)
    g = df.groupby("config", sort=False).agg(model=("model", "first"), size=("size", "first"),
                                             seeds=("seed", lambda s: ",".join(map(str, s))),
                                             wall_s=("wall_s", "mean"), best_epoch=("best_epoch", "mean"),
                                             val_auc=("val_auc", "mean"), val_acc=("val_acc", "mean"),
                                             val_spec=("val_spec", "mean"), val_sens=("val_sens", "mean"),
                                             val_acc_t=("val_acc_t", "mean"),
                                             tta_auc=("tta_auc", "mean"), tta_acc=("tta_acc", "mean"))
    print(g.round(4).to_markdown())


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The command line this folder's training scripts share: which configurations, seeds, threads; --table."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=[])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true")
    return ap


def run_grid(configs: list[str], seeds: list[int], threads: int, known, train) -> None:
    """``train(config, seed, threads)`` for every configuration and seed, after checking every name is ``known``."""
    unknown = [n for n in configs if n not in known]
    if unknown:
        sys.exit(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(known)}")
    ROOT.mkdir(parents=True, exist_ok=True)
    for n in configs:
        for sd in seeds:
            train(n, sd, threads)


if __name__ == "__main__":
    ap = run_arguments(__doc__)
    ap.add_argument("--ensemble", nargs="*", default=[])
    a = ap.parse_args()
    run_grid(a.configs, a.seeds, a.threads, CONFIGS, run)
    for n in a.ensemble:
        ensemble(n)
    if a.table:
        table()
