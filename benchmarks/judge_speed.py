"""How long a judge takes to read 8 answers: SmolLM2-135M-Instruct served by `transformers serve` on
127.0.0.1 (the smol preset's converted GGUF), the 8 answers of the default run in the labelled set
(tests/data/labels/smol_answers.jsonl), each asked every dimension's yes/no items (ground/judge.py). Prints the
server's start, the calibration, the 8 answers' seconds and seconds a call, and the CPU.

    python benchmarks/judge_speed.py            # on 2 CPU cores: the server and the judge share them
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def main() -> None:
    from cpu_speed import cpu_line

    from molting_mlflow.ground.judge import Judge, check, judge_answers
    from molting_mlflow.ground.models import ensure_smol
    from molting_mlflow.ground.persona import load_persona
    from molting_mlflow.ground.questions import load_questions

    here = Path(tempfile.mkdtemp(prefix="molting-judge-"))
    (here / "smol").symlink_to(ensure_smol())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("transformers")
    t0 = time.time()
    server = subprocess.Popen([str(exe), "serve", "smol", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                              cwd=here, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        start_s = time.time() - t0
        judge = Judge("openai:/smol", f"http://127.0.0.1:{port}/v1")
        t = time.time()
        calibration = check(judge)
        check_s = time.time() - t
        rows = [json.loads(x) for x in (ROOT / "tests/data/labels/smol_answers.jsonl").read_text(encoding="utf-8")
                .splitlines()]
        records = [{"id": r["id"], "response": r["response"]} for r in rows if r["run"] == "default"]
        verdicts = judge_answers(judge, load_persona(ROOT / "data/persona.yaml"),
                                 load_questions(ROOT / "data/eval_questions.json"), records)
    finally:
        server.terminate()
        server.wait(30)
    calls = sum(v.asked for qid, vs in verdicts.items() if qid != "_seconds" for v in vs)
    print(f"\njudge: SmolLM2-135M-Instruct via transformers serve on 127.0.0.1; {cpu_line()}\n")
    print("| server start s | check (2 calibration calls) s | 8 answers s | calls | s a call | calibration |")
    print("|---|---|---|---|---|---|")
    print(f"| {start_s:.1f} | {check_s:.1f} | {verdicts['_seconds']:.1f} | {calls} | {verdicts['_seconds'] / calls:.2f} | "
          f"{calibration} |")


if __name__ == "__main__":
    main()
