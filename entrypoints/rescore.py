"""MLproject entry point `rescore`: `mlflow run . -e rescore -P run_ids="3f2c… 7b1d…"` (or
-P experiment_name=molting). Re-scores logged answers under the current rubric; nothing else."""
import sys

from molting_mlflow.cli import main

if __name__ == "__main__":
    # MLflow passes run_ids="3f2c… 7b1d…" as one argument (it quotes each value): the ids are its words
    *ids, flag, experiment = sys.argv[1:]
    args = [word for a in ids for word in a.split()] + ([flag, experiment] if experiment else [])
    main(["rescore", *args], prog_name="entrypoints/rescore.py")
