"""DVC stage `train@<model>`: train one architecture (resumable), tracked in MLflow."""

import sys

from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.errors import LungxrayError
from lungxray.core.stage import run_stage
from lungxray.data.preprocess import PreprocessParams
from lungxray.data.split import SplitParams
from lungxray.models.calibration import CalibrationParams
from lungxray.train.distributed import launch, launch_command, main_process
from lungxray.train.fit import train_model
from lungxray.train.settings import TrainParams


def main() -> None:
    if len(sys.argv) != 2:
        raise LungxrayError("usage: python stages/train.py MODEL (one of train.models in params.yaml)")
    name = sys.argv[1]
    params = load_sections({"train": TrainParams, "preprocess": PreprocessParams, "split": SplitParams,
                            "calibration": CalibrationParams})
    if name not in params.train.models:
        raise LungxrayError(f"'{name}' is not in train.models {params.train.models}")
    if cmd := launch_command(__file__, [name], params.train.nproc_per_node):  # several processes: under torchrun
        return launch(cmd)
    m = train_model(name, params.train, schema.PROCESSED, schema.model_dir(name), schema.model_metrics_dir(name),
                    extra_params={"preprocess": params.preprocess.model_dump(mode="json"),
                                  "split": params.split.model_dump(mode="json")}, calibration=params.calibration)
    if not main_process():
        return
    print(f"train {name}: best val loss {m['best_val_loss']:.4f}, accuracy {m['best_val_accuracy']:.3f} at epoch "
          f"{m['best_epoch']}; {m['seconds_per_epoch']:.1f} s/epoch; {m['trainable_parameters']:,} trainable "
          f"parameters; MLflow run {m['mlflow_run_id']}"
          + (f"; {m['processes']} process(es), {m['distributed_backend']} backend" if m.get("distributed_backend")
             else ""))


if __name__ == "__main__":
    run_stage("train", main)
