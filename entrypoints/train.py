"""MLproject entry point `train`: `mlflow run . -e train -P model=smol`. Parses the typed
parameters (the same options as `molting train`) and calls the library; nothing else."""
import sys

from molting_mlflow.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="entrypoints/train.py")
