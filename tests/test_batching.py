"""Batches instead of single examples change speed, not what is learned: a step's examples in one
padded micro-batch give the same loss and the same LoRA gradients as one example at a time with
gradient accumulation (TRL divides by the step's answer tokens either way), and the loss is on
answer tokens only."""
import shutil

import pytest
import torch


@pytest.fixture(scope="module")
def trainer():
    """The project's own trainer (train._trainer, as `molting train` builds it) on tiny-random, four
    examples a micro-batch (lora_dropout 0: a dropout mask differs between the two passes). The tests
    fail when _trainer changes what is learned: its SFTConfig's `completion_only_loss=True` → False puts
    loss on the prompt (test_the_loss_is_on_answer_tokens_only); its LoraConfig ignoring the config's
    lora_dropout (`lora_dropout=0.1`) makes a batch of four differ from four of one (both checked)."""
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.models import load_for_training
    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS
    from molting_mlflow.ground.prepare import prepare
    from molting_mlflow.ground.questions import load_questions
    from molting_mlflow.stages.train import _trainer

    p = prepare(TrainConfig(model="tiny-random", batch_size=4, grad_accum=1, lora_dropout=0.0, min_steps=0))
    assert p.plan.micro_batch == 4
    t, _ = _trainer(p, load_for_training(p.source, p.plan), "no-run", load_questions(DEFAULT_QUESTIONS), ())
    for n, param in t.model.named_parameters():      # a trained-looking adapter: B is zero at init
        if "lora_B" in n:
            torch.nn.init.normal_(param, std=0.02)
    t.model.train()
    yield t
    shutil.rmtree(t.args.output_dir, ignore_errors=True)     # _trainer's output_dir (_run_trainer removes it)


def _loss_and_grads(trainer, batches, n_tokens):
    trainer.model.zero_grad()
    total = 0.0
    for b in batches:
        loss = trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=n_tokens)
        loss.backward()
        total += float(loss)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return total, grads


def test_one_micro_batch_of_four_equals_four_of_one(trainer):
    examples = [trainer.train_dataset[i] for i in range(4)]
    collate = trainer.data_collator
    together = collate(examples)
    lengths = {len(e["input_ids"]) for e in examples}
    assert len(lengths) > 1 and (together["labels"] == -100).any()       # padded: the case that could differ
    n_tokens = int((together["labels"][:, 1:] != -100).sum())            # answer tokens the step predicts
    singles = [collate([e]) for e in examples]
    assert n_tokens == sum(int((s["labels"][:, 1:] != -100).sum()) for s in singles)
    loss_b, grads_b = _loss_and_grads(trainer, [together], n_tokens)
    loss_1, grads_1 = _loss_and_grads(trainer, singles, n_tokens)
    assert loss_b == pytest.approx(loss_1, rel=1e-5)
    assert grads_b.keys() == grads_1.keys() and grads_b
    for n in grads_b:
        assert torch.allclose(grads_b[n], grads_1[n], rtol=1e-4, atol=1e-7), n


def test_the_loss_is_on_answer_tokens_only(trainer):
    """The collated labels train exactly the answer and its end-of-turn token, never the prompt."""
    e = trainer.train_dataset[0]
    labels = trainer.data_collator([e])["labels"][0].tolist()
    trained = trainer.processing_class.decode([i for i, lab in zip(e["input_ids"], labels) if lab != -100])
    answer = e["completion"][0]["content"]
    assert trained.startswith(answer) and trained[len(answer):].strip() == "<|im_end|>", trained
    assert e["prompt"][0]["content"] not in trained        # the system prompt carries no loss
