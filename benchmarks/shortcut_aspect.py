"""Does padding hand the model the source? ``preprocess.aspect: pad`` vs ``crop`` on the CI profile's sources.

    python benchmarks/shortcut_aspect.py [--config configs/shared-data.yaml] [--size 64] [--epochs 5]
                                         [--probe-epochs 5] [--work DIR]

Runs the profile's fetch, dedupe, validate and split stages once in a scratch folder (``--work``; kept, so a rerun
starts from its split), then for each aspect: preprocesses the split at ``--size`` px, runs the shortcut check's
source probe (:func:`lungxray.external.shortcut.run_shortcut`, the profile's ``shortcut`` settings with
``--probe-epochs``) and trains the label classifier (cnn5, the profile's train settings with ``--epochs``), scored on
val. Prints one table: probe accuracy [CI] against the majority-source rate and 1/k, classifier val accuracy and macro
recall [CI]. """

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from lungxray.cli.params_check import load_params
from lungxray.core.tracking import MlflowParams
from lungxray.data.preprocess import load_split, run_preprocess
from lungxray.evaluate.metrics import EvaluateParams, compute_metrics
from lungxray.models.trained import load_trained_model
from lungxray.train.fit import train_model

REPO = Path(__file__).resolve().parents[1]


def scratch_params(config: Path, work: Path) -> Path:
    """The profile with its folder sources' paths made absolute (they are relative to the repository root)."""
    data = yaml.safe_load(config.read_text())
    for source in data["fetch"]["sources"]:
        if "path" in source:
            source["path"] = str((REPO / source["path"]).resolve())
    (work / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return work / "params.yaml"


def split_once(work: Path) -> None:
    if (work / "data/split/split.csv").exists():
        return
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for stage in ("fetch", "dedupe", "validate", "split"):
        print(f"running {stage} ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work, env=env, check=True,
                       stdout=subprocess.DEVNULL)


def measure(work: Path, params, aspect: str, args) -> dict:
    from lungxray.external.shortcut import run_shortcut

    split_df = pd.concat([pd.read_csv(work / f, keep_default_na=False) for f in
                          ("data/split/split.csv", "data/split/official_test.csv")], ignore_index=True)
    split_df["path"] = [str(work / f) for f in split_df.path]  # relative to the scratch folder
    processed = work / f"processed_{aspect}"
    pre = params.preprocess.model_copy(update={"image_size": args.size, "aspect": aspect})
    run_preprocess(split_df, params.fetch.classes, pre, processed, progress=False, max_pixels=params.fetch.max_pixels)
    probe = run_shortcut(processed, params.shortcut.model_copy(update={"epochs": args.probe_epochs}))
    train = params.train.model_copy(update={"models": ["cnn5"], "epochs": args.epochs, "mlflow": MlflowParams(
        tracking_uri=f"sqlite:///{work}/mlruns/mlflow.db", artifact_dir=str(work / "mlruns/artifacts"))})
    train_model("cnn5", train, processed, work / f"models_{aspect}", work / f"metrics_{aspect}", progress=False)
    model = load_trained_model(work / f"models_{aspect}/model.pt")
    images, labels = load_split(processed, "val")
    index = pd.read_csv(processed / "index.csv", keep_default_na=False, dtype=str)
    units = index[index.split == "val"].sort_values("row", key=lambda r: r.astype(int))["unit"].to_numpy()
    m = compute_metrics(labels, model.proba(images, temperature=1.0), model.classes,
                        EvaluateParams(bootstrap=1000), units)
    return {"aspect": aspect, "probe": probe["probe"], "cramers_v": probe["labels"]["cramers_v"], "val": m}


def row(r: dict) -> str:
    p, v = r["probe"], r["val"]

    def ci(d, k):
        return f"{d[k]:.3f} [{d[k + '_ci_low']:.3f}, {d[k + '_ci_high']:.3f}]"

    return (f"| {r['aspect']} | {ci(p, 'accuracy')} | {p['majority_rate']:.3f} | {p['uniform_rate']:.3f} | "
            f"{ci(v, 'accuracy')} | {ci(v, 'macro_recall')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs/shared-data.yaml")
    ap.add_argument("--size", type=int, default=64, help="preprocess.image_size")
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the label classifier (cnn5)")
    ap.add_argument("--probe-epochs", type=int, default=5, help="epochs of the source probe")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    args = ap.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="shortcut_aspect_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    params = load_params(scratch_params(args.config.resolve(), work))
    split_once(work)
    results = [measure(work, params, aspect, args) for aspect in ("pad", "crop")]
    p = results[0]["probe"]
    print(f"\n{args.config.name}: {p['train_images']} train / {p['val_images']} val images, {len(p['sources'])} "
          f"sources; preprocess {args.size} px; probe {p['model']} {args.probe_epochs} epochs at {p['image_size']} "
          f"px; classifier cnn5 {args.epochs} epochs; Cramer's V label x source {results[0]['cramers_v']:.3f}\n")
    print("| aspect | probe val accuracy [95% CI] | majority source | 1/k | classifier val accuracy [95% CI] | "
          "classifier val macro recall [95% CI] |")
    print("|:---|---:|---:|---:|---:|---:|")
    for r in results:
        print(row(r))
    print("\nper-source probe recall (pad / crop):")
    for s in p["per_source"]:
        print(f"  {s}: " + " / ".join(f"{r['probe']['per_source'][s]['recall'] or 0:.3f}" for r in results))
    print(f"\nscratch folder: {work}")


if __name__ == "__main__":
    main()
