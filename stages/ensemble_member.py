"""DVC stage `ensemble_member@<model>`: after evaluate@<model>, the SHA-256 of what the ensemble reads of it."""

import sys

from lungxray.core import schema
from lungxray.core.errors import LungxrayError
from lungxray.core.io import write_json
from lungxray.core.stage import run_stage
from lungxray.ensemble.members import MEMBER_RECORDS, member_record


def main() -> None:
    if len(sys.argv) != 2:
        raise LungxrayError("usage: python stages/ensemble_member.py MODEL")
    name = sys.argv[1]
    record = member_record(name, schema.model_metrics_dir(name), schema.model_dir(name) / "model.pt")
    write_json(schema.METRICS / MEMBER_RECORDS / f"{name}.json", record)
    print(f"ensemble_member {name}: recorded its predictions, evaluation and model.pt")


if __name__ == "__main__":
    run_stage("ensemble_member", main)
