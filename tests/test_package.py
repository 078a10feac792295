"""The built wheel works without the checkout: `molting train` from an empty directory finds the persona,
dataset, questions and templates inside the installed package, and the model it registers loads and
answers where molting is not installed at all.

The fresh virtual environments see the already-installed stack (torch, transformers, mlflow, …) through
a .pth line naming this interpreter's site-packages, because installing that stack anew takes minutes
and gigabytes. A path line in a .pth adds the folder to sys.path but runs none of the .pth hooks inside
it, so the editable install of molting there stays inert: molting_mlflow can only come from the wheel
(the test asserts where it was imported from), and the second environment has none.
"""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def sources(dest: Path) -> Path:
    """The project's files (tracked and new, not ignored) copied aside, so building leaves no build/ here."""
    import shutil

    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the project's files")
    for name in listed:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def venv(path: Path) -> Path:
    """A virtual environment with no packages of its own; the stack visible through a .pth line."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def run(cmd, cwd, env, timeout=300):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-3000:])
    return r


def test_wheel_trains_from_an_empty_directory_and_its_model_loads_without_molting(tmp_path):
    src = sources(tmp_path / "src")
    import importlib.util

    # this environment's setuptools where it has one (no download); else pip's isolated build fetches it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp_path / "dist"), str(src)],
        tmp_path, os.environ)
    (wheel,) = (tmp_path / "dist").glob("molting_mlflow-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("persona.yaml", "dataset_personality_v1.json", "eval_questions.json", "languages/pt.txt",
              "languages/pt.yaml", "templates/gpt2_separators.jinja"):
        assert f"molting_mlflow/data/{f}" in names, f

    py = venv(tmp_path / "venv")
    # -I: pip's own check finds the editable molting of the visible stack; it must install beside it, not over it
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], tmp_path, os.environ)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(py), "-c", "import molting_mlflow.ground.paths as p; print(p.__file__); print(p.DATA_DIR)"],
                empty, env).stdout.split()
    site = str(tmp_path / "venv")
    assert all(w.startswith(site) for w in where), where

    r = run([str(tmp_path / "venv" / "bin" / "molting"), "train", "--model", "tiny-random", "--min-steps", "0",
             "--epochs", "1", "--eval-max-new-tokens", "8"], empty, env)
    assert "adapter: runs:/" in r.stdout
    run_id = r.stdout.split("adapter: runs:/")[1].split("/")[0]
    assert (empty / "mlflow.db").is_file()  # MLflow's default store, in the directory it ran from
    run([str(py), "-c", f"from molting_mlflow.stages.registry import register_adapter; register_adapter('{run_id}', "
         "'tiny-random')"], empty, env)

    bare = venv(tmp_path / "bare")  # the stack, and no molting at all
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import importlib.util, mlflow; assert importlib.util.find_spec('molting_mlflow') is None; "
            "m = mlflow.pyfunc.load_model('models:/molting-tiny-random/1'); "
            "print(repr(m.predict(['Quem é você?'], params={'max_new_tokens': 8})))")
    out = run([str(bare), "-c", code], elsewhere, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{empty / 'mlflow.db'}"})
    answers = eval(out.stdout.strip().splitlines()[-1])
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)
