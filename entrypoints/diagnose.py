"""MLproject entry point `diagnose`: `mlflow run . -e diagnose -P run_id=<run> -P vs=<other>`.
Logs diagnosis.md on the diagnosed run. Calls the library."""
import sys

from molting_mlflow.cli import main

if __name__ == "__main__":
    main(["diagnose", *sys.argv[1:]], prog_name="entrypoints/diagnose.py")
