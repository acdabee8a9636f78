"""PneumoniaMNIST: why the benchmark profile's val loss jumps from epoch to epoch, and recipes that smooth it (val
only).

Every run is the project's own ``lungxray.train.fit.train_model`` on the processed folder that ``explore.py`` builds
(official train/val of ``pneumoniamnist_trainval.npz``, 28 px; the official test split is not used). Besides the
history the train stage writes, each epoch's val pass is diagnosed here (``train.run_epoch`` is wrapped, the
training itself is untouched):

* ``val_loss_precise_bn``: the val loss of the same weights after their BatchNorm statistics are recomputed on the
  whole train split (no augmentation). If this curve is smooth where ``val_loss`` jumps, the eval-mode (running)
  statistics are what jumps, not the weights.
* ``val_loss_normal`` / ``val_loss_pneumonia``: the val loss per class; ``val_p_mean``: the mean P(pneumonia) on val
  (val is 74 % pneumonia, the weighted loss trains as if it were 50 %): a jump carried by one class is a bias swing.

Per run: the max and the std of the epoch-to-epoch change of the val loss (``jump_max``, ``jump_sd``) over epochs
2..N and over the second half (where the kept epoch lies), and val AUC/ACC of the saved ``model.pt``.

    python benchmarks/pneumoniamnist/smooth.py --configs base lr1e-3 --seeds 0 1 2 [--threads 1]
    python benchmarks/pneumoniamnist/smooth.py --table [--plot base ema [--plot-file F.png]]   # mean ± sd; curves PNG
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
import explore  # noqa: E402  (the processed folder, val probabilities and scores of the earlier recipe search)
from seed_stats import mean_sd  # noqa: E402

import lungxray.train.fit as train_mod  # noqa: E402
from lungxray.core.tracking import MlflowParams  # noqa: E402
from lungxray.images.augment import AugmentParams  # noqa: E402
from lungxray.train.settings import TrainParams  # noqa: E402

ROOT = Path(os.environ.get("PM_ROOT", "/tmp/pm"))
HERE = Path(__file__).parent
AUG = dict(enabled=True, degrees=5, translate=0.05, scale=(0.95, 1.05), brightness=0.1, contrast=0.1, hflip=False)
# the benchmark profile's train section (configs/pneumoniamnist.yaml before this search)
BASE = dict(epochs=20, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=1e-4, scheduler="cosine",
            early_stopping_patience=20, imbalance="weighted_loss", augment=AUG)
CONFIGS = {
    "base": {},
    "lr1e-3": dict(lr=1e-3),
    "bs256": dict(batch_size=256),
    "noweight": dict(imbalance="none"),
    "warmup2": dict(warmup_epochs=2),
    "ema": dict(weight_averaging="ema", ema_decay=0.995),
    "swa": dict(weight_averaging="swa", swa_start=11),
    "lr1e-3_ema": dict(lr=1e-3, weight_averaging="ema", ema_decay=0.995),
}
TITLES = {"base": "base: lr 3e-3, batch 64, weighted loss", "ema": "base (solid) and its EMA, decay 0.995 (dashed)",
          "lr1e-3": "lr 1e-3", "bs256": "batch 256", "noweight": "imbalance: none (no class weights)",
          "warmup2": "2 warm-up epochs", "swa": "SWA from epoch 11",
          "lr1e-3_ema": "lr 1e-3 (solid) and its EMA, decay 0.995 (dashed)"}


# --- per-epoch diagnostics --------------------------------------------------------------------------------------------


class Diagnose:
    """Wraps ``train.run_epoch``: after each val pass, the precise-BN val loss, per-class val loss and mean P."""

    def __init__(self, processed: Path):
        self.x_train = torch.from_numpy(np.load(processed / "train.npy")).float().unsqueeze(1) / 255.0
        self.x_val = torch.from_numpy(np.load(processed / "val.npy")).float().unsqueeze(1) / 255.0
        self.y_val = torch.from_numpy(explore.val_labels()).long()
        self.rows, self.orig, self.trained = [], train_mod.run_epoch, False

    def __call__(self, model, batches, loss_fn, feed, opt=None, **kw):
        out = self.orig(model, batches, loss_fn, feed, opt, **kw)
        if opt is not None:
            self.trained = True
        elif self.trained:  # the raw weights' val pass (the averaged weights' one follows it)
            self.rows.append({**self.measure(model, feed.mean, feed.std), **self.auc_acc(model, feed.mean, feed.std,
                                                                                            "")})
            self.trained = False
        elif self.rows:
            self.rows[-1].update(self.auc_acc(model, feed.mean, feed.std, "_avg"))
        return out

    def auc_acc(self, model: nn.Module, mean, std, suffix: str) -> dict:
        m, s = torch.as_tensor(mean).reshape(1, -1, 1, 1), torch.as_tensor(std).reshape(1, -1, 1, 1)
        with torch.inference_mode():
            model.eval()
            p = torch.softmax(model(((self.x_val - m) / s).expand(-1, 3, -1, -1).contiguous()), 1)[:, 1].numpy()
        sc = explore.scores(p, self.y_val.numpy())
        return {f"val_auc{suffix}": sc["auc"], f"val_acc{suffix}": sc["acc"]}

    def measure(self, model: nn.Module, mean, std) -> dict:
        m = torch.as_tensor(mean).reshape(1, -1, 1, 1)
        s = torch.as_tensor(std).reshape(1, -1, 1, 1)
        norm = lambda x: ((x - m) / s).expand(-1, 3, -1, -1).contiguous()  # noqa: E731
        with torch.inference_mode():
            model.eval()
            logits = torch.cat([model(norm(self.x_val[i:i + 512])) for i in range(0, len(self.x_val), 512)])
            per = nn.functional.cross_entropy(logits, self.y_val, reduction="none")
            row = {"val_loss_normal": float(per[self.y_val == 0].mean()),
                   "val_loss_pneumonia": float(per[self.y_val == 1].mean()),
                   "val_p_mean": float(torch.softmax(logits, 1)[:, 1].mean())}
            saved = {k: v.clone() for k, v in model.state_dict().items()}
            bns = [b for b in model.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
            for b in bns:
                b.reset_running_stats()
                b.momentum = None  # cumulative average over the whole train split
            model.train()
            for i in range(0, len(self.x_train), 512):
                model(norm(self.x_train[i:i + 512]))
            model.eval()
            logits = torch.cat([model(norm(self.x_val[i:i + 512])) for i in range(0, len(self.x_val), 512)])
            row["val_loss_precise_bn"] = float(nn.functional.cross_entropy(logits, self.y_val))
            model.load_state_dict(saved)
            for b in bns:
                b.momentum = 0.1
        return row


# --- runs -------------------------------------------------------------------------------------------------------------


def jumps(v: np.ndarray) -> dict:
    d = np.abs(np.diff(v))
    h = np.abs(np.diff(v[len(v) // 2:]))
    return {"rise_max": float(np.diff(v).max()), "jump_max": float(d.max()), "jump_sd": float(np.diff(v).std()), "jump_max_2nd_half": float(h.max()),
            "jump_sd_2nd_half": float(np.diff(v[len(v) // 2:]).std())}


def run(name: str, seed: int, threads: int) -> dict:
    processed = explore.build_processed(28, "bilinear")
    tr = {**BASE, **CONFIGS[name]}
    tr["augment"] = AugmentParams(**tr["augment"])
    out = ROOT / "smooth" / f"{name}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    params = TrainParams(models=["cnn8"], pretrained=False, seed=seed, device="cpu", torch_threads=threads,
                         precision="fp32", mlflow=MlflowParams(tracking_uri=f"sqlite:///{out}/mlflow.db",
                                                               artifact_dir=str(out / "art"),
                                                               experiment="smooth"), **tr)
    diag = Diagnose(processed)
    train_mod.run_epoch = diag
    t0 = time.perf_counter()
    try:
        m = train_mod.train_model("cnn8", params, processed, out / "model", out / "metrics", progress=False)
    finally:
        train_mod.run_epoch = diag.orig
    hist = pd.read_csv(out / "metrics" / "history.csv")
    hist = pd.concat([hist, pd.DataFrame(diag.rows)], axis=1)
    hist.to_csv(out / "history_diag.csv", index=False)
    s = explore.scores(explore.val_probs(out / "model" / "model.pt", processed), explore.val_labels())
    ck = torch.load(out / "model" / "model.pt", map_location="cpu", weights_only=True)
    rec = {"config": name, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1), "best_epoch": m["best_epoch"],
           "kept": ck.get("weights", "raw"), "val_auc": s["auc"], "val_acc": s["acc"], "val_acc_t": s["acc_t"],
           **{k: v for k, v in jumps(hist.val_loss.to_numpy()).items()},
           **{f"pbn_{k}": v for k, v in jumps(hist.val_loss_precise_bn.to_numpy()).items()}}
    raw_best = hist.loc[hist.val_loss.idxmin()]  # the baseline's choice: the raw weights of least val loss
    rec.update(raw_best_epoch=int(raw_best.epoch), raw_val_auc=raw_best.val_auc, raw_val_acc=raw_best.val_acc)
    if "val_loss_avg" in hist:
        rec.update({f"avg_{k}": v for k, v in jumps(hist.val_loss_avg.to_numpy()).items()})
    with open(ROOT / "smooth.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print("RESULT", json.dumps(rec), flush=True)
    return rec


# --- report -----------------------------------------------------------------------------------------------------------


def table() -> str:
    df = pd.DataFrame([json.loads(line) for line in open(ROOT / "smooth.jsonl")])
    df = df.drop_duplicates(["config", "seed"], keep="last")
    cols = [c for c in ["raw_val_auc", "raw_val_acc", "raw_best_epoch", "val_auc", "val_acc", "best_epoch", "rise_max", "jump_max", "jump_sd", "jump_max_2nd_half",
                        "avg_rise_max", "avg_jump_max", "avg_jump_max_2nd_half"] if c in df]
    lines = ["| recipe | seeds | kept | " + " | ".join(cols) + " |", "|---|---|---|" + "---:|" * len(cols)]
    for name, g in df.groupby("config", sort=False):
        cells = [mean_sd(g[c].tolist()) for c in cols]
        kept = ",".join(g.kept.astype(str))
        lines.append(f"| {name} | {','.join(map(str, g.seed))} | {kept} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def histories(name: str) -> list[tuple[str, pd.DataFrame]]:
    """(seed, per-epoch history) of each run of ``name``: the finished run's diagnosed history, else the epochs an
    unfinished run's checkpoint holds so far."""
    out = []
    for d in sorted((ROOT / "smooth").glob(f"{name}_s*")):
        seed = d.name.rsplit("_s", 1)[1]
        if (d / "history_diag.csv").exists():
            out.append((seed, pd.read_csv(d / "history_diag.csv")))
        elif (d / "model" / "checkpoint.pt").exists():
            ck = torch.load(d / "model" / "checkpoint.pt", map_location="cpu", weights_only=True)
            out.append((seed, pd.DataFrame(ck["history"])))
    return out


def curve_table(name: str) -> str:
    """Per seed: epochs so far, and the epoch-to-epoch jumps of the raw and the averaged val loss."""
    lines = ["| run | epochs | raw: max rise | raw: max jump | raw: sd of changes | averaged: max rise | "
             "averaged: max jump | averaged: sd of changes |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for seed, h in histories(name):
        r = jumps(h.val_loss.to_numpy())
        a = jumps(h.val_loss_avg.to_numpy()) if "val_loss_avg" in h else dict.fromkeys(r, math.nan)
        lines.append(f"| {name} seed {seed} | {len(h)} | {r['rise_max']:.3f} | {r['jump_max']:.3f} | "
                     f"{r['jump_sd']:.3f} | {a['rise_max']:.3f} | {a['jump_max']:.3f} | {a['jump_sd']:.3f} |")
    return "\n".join(lines)


def plot(names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        for seed, h in histories(name):
            line, = ax.plot(h.epoch, h.val_loss, marker=".", label=f"val loss, seed {seed}")
            if "val_loss_avg" in h:
                ax.plot(h.epoch, h.val_loss_avg, ls="--", color=line.get_color(), label=f"averaged, seed {seed}")
        ax.set_title(TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel("val cross-entropy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    ap = explore.run_arguments(__doc__)
    ap.add_argument("--plot", nargs="*", default=[])
    ap.add_argument("--plot-file", default="val_loss_curves.png", help="PNG written beside this script")
    ap.add_argument("--curves", nargs="*", default=[], help="jump table from the histories so far (runs unfinished "
                                                            "included)")
    a = ap.parse_args()
    explore.ROOT = ROOT
    explore.run_grid(a.configs, a.seeds, a.threads, CONFIGS, run)
    if a.table:
        print(table())
    for n in a.curves:
        print(curve_table(n))
    if a.plot:
        plot(a.plot, HERE / a.plot_file)
