"""Local ImageNet-shaped weight files for the rehearsal profile (configs/rehearsal.yaml), and their checksums.

    python benchmarks/rehearsal/make_weights.py [--params params.yaml] [--out weights/rehearsal]

No ImageNet weights can be downloaded on the project's machines. So that the rehearsal still runs the transfer-learning
path exactly as a user with real weights would (``weights_file`` + ``weights_sha256``: the file is checked, loaded
through timm's pretrained loader, which drops the 1000-class classifier, the pretrained normalisation is used and the
frozen layers stay frozen), each timm architecture of ``train.model_options`` that names a ``weights_file`` gets its
own freshly initialised state dict, seeded, with timm's parameter names and the 1000 ImageNet classes.

An existing file is kept (its checksum stays the same, so DVC does not retrain). The params file's
``weights_sha256`` fields are then set to the files' checksums (only those lines change; comments are kept).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
import yaml

from lungxray.core.io import atomic_path, sha256_file
from lungxray.models.architectures import describe


def write_weights(model: str, path: Path, seed: int = 0) -> None:
    import timm

    torch.manual_seed(seed)
    net = timm.create_model(describe(model)["timm_name"], pretrained=False, num_classes=1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)


def fill_checksums(params_file: Path, checksums: dict[str, str]) -> str:
    """The params text with each model's ``weights_sha256`` (on its ``model_options`` line) set to its checksum."""
    lines = params_file.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = re.match(r"^(\s+)([A-Za-z0-9_.-]+):\s*\{", line)
        if m and m.group(2) in checksums and "weights_sha256" in line:
            lines[i] = re.sub(r"weights_sha256:\s*[^,}\s]+", f"weights_sha256: {checksums[m.group(2)]}", line)
    return "".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()
    options = (yaml.safe_load(args.params.read_text()).get("train") or {}).get("model_options") or {}
    checksums = {}
    for model, opts in options.items():
        if not (opts or {}).get("weights_file"):
            continue
        path = Path(opts["weights_file"])
        if not path.is_file():
            print(f"{model}: writing {path} (timm's initialisation of {describe(model)['timm_name']}, seed 0)",
                  flush=True)
            write_weights(model, path)
        checksums[model] = sha256_file(path)
        print(f"{model}: {path} sha256 {checksums[model]}")
    text = fill_checksums(args.params, checksums)
    with atomic_path(args.params) as tmp:
        Path(tmp).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
