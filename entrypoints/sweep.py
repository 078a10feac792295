"""MLproject entry point `sweep`: `mlflow run . -e sweep -P n_trials=12`. The run mlflow made is
the study's parent; each trial is a nested child run. Calls the library."""
import sys

from molting_mlflow.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]], prog_name="entrypoints/sweep.py")
