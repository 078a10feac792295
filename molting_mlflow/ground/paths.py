"""Where the project's own data lives: the persona card, the dataset, the evaluation questions and
the chat templates. One place, so that an installed package and a checkout resolve the same way.

The data sits in data/ at the repository root; a wheel carries it as molting_mlflow/data/ (pyproject's
package-dir maps one onto the other), and so does the copy of the package a registered model carries.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent      # molting_mlflow/ (this file is in its ground/)
DATA_DIR = next((d for d in (PACKAGE_DIR / "data", PACKAGE_DIR.parent / "data") if (d / "persona.yaml").is_file()),
                PACKAGE_DIR.parent / "data")
DEFAULT_PERSONA = DATA_DIR / "persona.yaml"
DEFAULT_DATASET = DATA_DIR / "dataset_personality_v1.json"
DEFAULT_QUESTIONS = DATA_DIR / "eval_questions.json"
TEMPLATES_DIR = DATA_DIR / "templates"
GPT2_TEMPLATE = TEMPLATES_DIR / "gpt2_separators.jinja"   # the user's mistake, reproduced on purpose


def sqlite_path(uri: str) -> Path | None:
    """The file of a SQLite tracking URI (sqlite:///…), else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
