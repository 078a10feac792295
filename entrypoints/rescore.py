"""MLproject entry point `rescore`: `mlflow run . -e rescore -P run_ids="3f2c… 7b1d…"` (or
-P experiment_name=molting). Re-scores logged answers under the current rubric; nothing else."""
import sys

from molting_mlflow.cli import cli

if __name__ == "__main__":
    args = [a for a in sys.argv[1:]]
    if args[-2:] == ["--experiment", ""]:
        args = args[:-2]
    cli.main(args=["rescore", *args], prog_name="entrypoints/rescore.py")
