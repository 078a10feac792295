"""MLproject entry point `evaluate`: `mlflow run . -e evaluate -P run_id=<train run>` (or
-P adapter=models:/molting-smol@champion; neither: the bare base model). Calls the library."""
import sys

from molting_mlflow.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]], prog_name="entrypoints/evaluate.py")
