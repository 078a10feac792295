# Sourced at the start of a device call (benchmarks/README_gpu.md): the carried wheels (.whl/) into
# /tmp/site, the environment every benchmark here expects, and what machine this is into $OUT.
#   source benchmarks/gpu_env.sh && python3 benchmarks/gpu_speed.py --archs phi3 ...
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GPU_BENCH_DIR=/tmp/gpu GIT_PYTHON_REFRESH=quiet \
       MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
mkdir -p "$GPU_BENCH_DIR"
{
  date -u '+%Y-%m-%d %H:%M UTC'
  git rev-parse --short HEAD 2>/dev/null || echo "commit: not a git checkout"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, transformers, trl, peft, mlflow, optuna, datasets, plotly; print("torch", torch.__version__,
"transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__, "mlflow", mlflow.__version__,
"optuna", optuna.__version__, "datasets", datasets.__version__, "plotly", plotly.__version__)'
  lscpu | grep -E '^(Model name|CPU\(s\))'
} > "${OUT:-/tmp}/machine.txt" 2>&1
cat "${OUT:-/tmp}/machine.txt"
