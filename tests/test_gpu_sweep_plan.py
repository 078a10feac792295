"""Several trials on one card, and what a trial does without fat: the trials-per-GPU arithmetic, the
workers' layout over the cards, merged-LoRA decoding (same greedy answers, the base given back bit
for bit), the output layer on answer tokens only (same loss and gradients), and a model folder that
takes its architecture's defaults. All on a CPU with tiny shapes; the GPU numbers are in
benchmarks/README_gpu.md."""
import json

import pytest
import torch

from molting_mlflow.ground import runtime
from molting_mlflow.ground.config import ConfigError, TrainConfig
from molting_mlflow.ground.sweep_config import SweepConfig
from molting_mlflow.stages.sweep import layout

# ---- trials per GPU ----------------------------------------------------------------------------

@pytest.mark.parametrize("peak, budget, cores, gpus, k, bound", [
    (14.3, 128.0, 16, 1, 8, "memory"),      # 128 // 14.8 = 8; 16 // 2 = 8: memory named first on a tie
    (14.3, 128.0, 8, 1, 4, "CPU cores"),    # 8 cores / 2 a trial = 4
    (31.2, 128.0, 16, 1, 4, "memory"),      # 128 // 31.7 = 4
    (3.3, 128.0, 32, 2, 8, "CPU cores"),    # 32 // (2 × 2) = 8 a card
    (200.0, 128.0, 16, 1, 1, "memory"),     # a trial that does not fit still gets one slot (its plan says why)
])
def test_trials_per_gpu_is_the_smaller_of_memory_and_cores(peak, budget, cores, gpus, k, bound):
    got, why = runtime.trials_per_gpu(peak, budget, cores, gpus)
    assert got == k
    assert f"bound by {bound}" in why and f"{peak:.1f} GiB" in why


def test_layout_on_a_cpu_is_one_worker():
    lay = layout(SweepConfig(model="tiny-random", n_trials=4), [])
    assert (lay.workers, lay.per_gpu, lay.gpus, lay.place(0)) == (1, 1, (), ("", 0))


def test_layout_spreads_workers_round_robin_and_splits_each_card(monkeypatch):
    monkeypatch.setattr(runtime, "gpu_free_gib", lambda: 120.0)
    lay = layout(SweepConfig(model="tiny-random", n_trials=16, trials_per_gpu=3), ["0", "1"])
    assert lay.workers == 6 and lay.per_gpu == 3
    assert [lay.place(i) for i in range(6)] == [("0", 0), ("1", 0), ("0", 1), ("1", 1), ("0", 2), ("1", 2)]
    assert lay.share_gib == 40.0                         # 120 GiB free / 3 trials a card


def test_layout_never_starts_more_workers_than_trials(monkeypatch):
    monkeypatch.setattr(runtime, "gpu_free_gib", lambda: 120.0)
    lay = layout(SweepConfig(model="tiny-random", n_trials=2, trials_per_gpu=8, gpu_memory_gib=64), ["0"])
    assert lay.workers == 2 and lay.per_gpu == 2 and lay.share_gib == 32.0


# ---- merged LoRA for decoding ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model

    from molting_mlflow.ground.models import build_tiny_random

    torch.manual_seed(0)
    base, tok = build_tiny_random()
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():          # a trained-looking adapter (B is zero at init)
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    return model.eval(), tok


def _answers(model, tok):
    from molting_mlflow.ground.generation import generate
    from molting_mlflow.ground.questions import Question

    qs = [Question(str(i), q, False, [], [], []) for i, q in enumerate(["Quem é você?", "Oi!", "Me ajuda com Python?"])]
    records, _ = generate(model, tok, qs, "Você é o Cláudio.", max_new_tokens=24)
    return [(r["response"], r["finish_reason"]) for r in records]


def test_merged_decoding_gives_the_same_answers_and_gives_the_base_back(lora_model):
    from peft.tuners.lora import LoraLayer

    from molting_mlflow.ground.generation import merged_lora

    model, tok = lora_model
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    before = {id(m): (m.get_base_layer().weight.data_ptr(), m.get_base_layer().weight.clone()) for m in layers}
    unmerged = _answers(model, tok)
    calls = []
    hooks = [m.lora_A["default"].register_forward_hook(lambda *a: calls.append(1)) for m in layers]
    try:
        with merged_lora(model):
            assert all(not torch.equal(m.get_base_layer().weight, before[id(m)][1]) for m in layers)  # merged
            merged = _answers(model, tok)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []                     # decoding never ran a LoRA matmul: the merged weights did the work
    assert merged == unmerged              # fp32: the same greedy tokens
    for m in layers:                       # the very tensors back, bit for bit (a sweep's next trial trains on them)
        ptr, w = before[id(m)]
        assert m.get_base_layer().weight.data_ptr() == ptr and torch.equal(m.get_base_layer().weight, w)
    assert _answers(model, tok) == unmerged


def test_a_lent_base_decodes_merged_in_its_own_tensors_and_comes_back_unwrapped():
    """A sweep worker's trials: the LoRA folded into the base's own weight storage and the LoRA layers taken off,
    so every trial decodes the same plain modules (one compiled graph on CUDA). fp32: the same greedy answers as
    the unmerged adapter; afterwards the very tensors hold the very values, and no LoRA layer is left."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from molting_mlflow.ground.generation import unloaded_merged
    from molting_mlflow.ground.models import build_tiny_random

    torch.manual_seed(1)
    base, tok = build_tiny_random()
    modules = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    before = {n: (m.weight.data_ptr(), m.weight.detach().clone()) for n, m in modules.items()}
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    model.eval()
    unmerged = _answers(model, tok)
    with unloaded_merged(model) as plain:
        assert plain is base and not any(isinstance(m, LoraLayer) for m in plain.modules())
        assert any(not torch.equal(modules[n].weight, w) for n, (_, w) in before.items())    # merged in place
        assert all(modules[n].weight.data_ptr() == ptr for n, (ptr, _) in before.items())   # the same storage
        merged = _answers(plain, tok)
    assert merged == unmerged
    for n, (ptr, w) in before.items():
        assert modules[n].weight.data_ptr() == ptr and torch.equal(modules[n].weight, w)
    assert dict(base.named_modules()).keys() >= modules.keys()


# ---- the output layer on answer tokens only ----------------------------------------------------

@pytest.fixture(scope="module")
def trainer():
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from molting_mlflow.ground.data import load_dataset
    from molting_mlflow.ground.models import build_tiny_random
    from molting_mlflow.ground.paths import DEFAULT_DATASET
    from molting_mlflow.ground.persona import load_persona

    torch.manual_seed(0)
    model, tok = build_tiny_random()
    rows = load_dataset(DEFAULT_DATASET, load_persona().system_prompt).rows[:3]
    args = SFTConfig(output_dir="/tmp/molting-test-answer-logits", use_cpu=True, report_to="none", max_length=128,
                     completion_only_loss=True, per_device_train_batch_size=3)
    t = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                   peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                          target_modules=["q_proj", "v_proj"]))
    for n, p in t.model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    t.model.train()
    return t


def _step(trainer, batch, monkeypatch, answers_only: bool):
    """One micro-batch's loss, LoRA gradients and the rows TRL's chunked head projected."""
    from trl.trainer import utils as trl_utils

    if answers_only:
        runtime.answer_logits_only()
    else:
        original = trl_utils._use_triton
        monkeypatch.setattr(trl_utils, "_use_triton", lambda d: d.type != "cpu" and original(d))
    rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: rows.append(hidden.shape[0]) or apply(hidden, *a))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    monkeypatch.undo()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return float(loss), grads, rows


def test_the_output_layer_runs_on_answer_tokens_only_with_the_same_loss_and_gradients(trainer, monkeypatch):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    positions = batch["labels"][:, 1:].numel()
    assert labelled < positions / 2                      # mostly prompt and padding: the case it saves on
    loss_all, grads_all, rows_all = _step(trainer, batch, monkeypatch, answers_only=False)
    loss_ans, grads_ans, rows_ans = _step(trainer, batch, monkeypatch, answers_only=True)
    assert rows_all == [positions] and rows_ans == [labelled]
    assert loss_ans == pytest.approx(loss_all, rel=1e-6)
    assert grads_ans.keys() == grads_all.keys() and grads_ans
    for n in grads_ans:
        assert torch.allclose(grads_ans[n], grads_all[n], rtol=1e-5, atol=1e-8), n


# ---- a model folder takes its architecture's defaults ------------------------------------------

@pytest.mark.parametrize("arch, preset", [({"model_type": "phi3", "hidden_size": 3072}, "phi3"),
                                          ({"model_type": "llama", "hidden_size": 2048}, "tinyllama"),
                                          ({"model_type": "llama", "hidden_size": 576}, "smol")])
def test_a_model_folder_takes_its_architectures_preset_defaults(tmp_path, arch, preset):
    from molting_mlflow.ground.presets import PRESETS

    (tmp_path / "config.json").write_text(json.dumps(arch))
    cfg = TrainConfig(model=str(tmp_path)).resolve()
    want = PRESETS[preset]
    assert (cfg.epochs, cfg.grad_accum, cfg.batch_size, cfg.max_seq_len, cfg.lr) == (
        want.epochs, want.grad_accum, want.batch_size, want.max_seq_len, want.lr)


def test_reference_nll_projects_reference_tokens_only_and_equals_the_full_logits_loss(lora_model):
    """ref_nll through the output layer on the reference tokens only equals the mean cross-entropy
    of the model's own full logits over the same tokens (computed here from model(...).logits)."""
    from molting_mlflow.ground.generation import messages, reference_nll
    from molting_mlflow.ground.questions import Question

    model, tok = lora_model
    qs = [Question("1", "Quem é você?", False, [], [], [], reference="Sou o Cláudio, do João! 🦞"),
          Question("2", "Oi!", False, [], [], [], reference="Oi! Bora codar?")]
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    try:
        got = reference_nll(model, tok, qs, "Você é o Cláudio.")
    finally:
        hook.remove()
    total = count = 0.0
    for q in qs:
        prompt = messages("Você é o Cláudio.", q.question)
        p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"]
        full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": q.reference}],
                                       tokenize=True)["input_ids"]
        start = next(i for i, (a, b) in enumerate(zip(p_ids + [None], full)) if a != b)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[start - 1:-1], torch.tensor(full[start:]), reduction="sum")
        total, count = total + float(nll), count + len(full) - start
    assert got == pytest.approx(total / count, rel=1e-5)
    assert len(rows) == 1 and rows[0][0] == count       # one call, on the reference tokens alone (not every position)


def test_pyspark_is_marked_absent_so_no_thread_imports_it(monkeypatch):
    """tracking._no_spark_lookups: with pyspark not installed, `import pyspark` must fail at once from
    sys.modules, not through the finders that MLflow's import-hook lock guards (the system-metrics
    thread and mlflow.genai.evaluate deadlocked there). Without the mark, the import reaches the finders."""
    import importlib.util
    import sys

    import molting_mlflow.store.tracking as tracking

    if importlib.util.find_spec("pyspark") is not None and sys.modules.get("pyspark") is not None:
        pytest.skip("pyspark is installed here: nothing to mark")
    assert "pyspark" in sys.modules and sys.modules["pyspark"] is None
    searched = []

    class Spy:
        def find_spec(self, name, path=None, target=None):
            searched.append(name)

    monkeypatch.setattr(sys, "meta_path", [Spy(), *sys.meta_path])
    with pytest.raises(ImportError):
        from pyspark.sql import SparkSession  # noqa: F401
    assert "pyspark" not in searched and "pyspark.sql" not in searched
    monkeypatch.delitem(sys.modules, "pyspark")
    tracking._no_spark_lookups()
    assert sys.modules["pyspark"] is None


@pytest.mark.parametrize("gib,ok", [(0, True), (4096, True), (4096.5, False), (-1, False), (True, False)])
def test_train_and_sweep_take_the_same_memory_budgets(gib, ok):
    # one bound (config.GPU_GIB_OK) for both: either config accepting a budget the other refuses fails here
    for make in (lambda: TrainConfig(gpu_memory_gib=gib), lambda: SweepConfig(model="tiny-random", gpu_memory_gib=gib)):
        if ok:
            make()
        else:
            with pytest.raises(ConfigError, match=r"GiB in 0\.\.4096"):
                make()
