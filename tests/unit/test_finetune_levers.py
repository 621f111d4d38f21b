"""The recipe's accuracy-per-CPU-second levers: frozen embeddings, AdamW's implementation, label smoothing."""
import dataclasses

import pytest
import torch
from transformers import BertConfig, BertModel

from trainer.finetune import FineTuned, PooledClassifier, adamw_impl, freeze, train_loop
from trainer.recipe import FROZEN_EMBEDDINGS, Recipe


def tiny_classifier(n_labels: int = 3) -> PooledClassifier:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    return PooledClassifier(BertModel(config, add_pooling_layer=False), n_labels)


def recipe(**changes) -> Recipe:
    base = Recipe(max_length=8, batch_size=4, learning_rate=1e-2, head_learning_rate=1e-2, weight_decay=0.01,
                  warmup_ratio=0.0, max_epochs=2, patience=5, evals_per_epoch=1, time_budget_s=None,
                  head_init="random")
    return dataclasses.replace(base, **changes)


def test_freeze_stops_only_the_named_modules():
    model = tiny_classifier()
    frozen = freeze(model, ("word_embeddings",))
    assert frozen == 40 * 8
    assert not model.encoder.embeddings.word_embeddings.weight.requires_grad
    assert model.encoder.embeddings.position_embeddings.weight.requires_grad
    assert model.encoder.embeddings.LayerNorm.weight.requires_grad and model.head.weight.requires_grad


def test_a_frozen_matrix_is_unchanged_by_training_and_the_rest_learns():
    model = tiny_classifier()
    words = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    layer = model.encoder.encoder.layer[0].attention.self.query.weight.detach().clone()
    ids = [[1 + (i * 7 + j) % 39 for j in range(5)] for i in range(16)]
    targets = torch.tensor([i % 3 for i in range(16)])

    def step_loss(rows):
        logits = model(input_ids=torch.tensor([ids[r] for r in rows]),
                       attention_mask=torch.ones(len(rows), 5, dtype=torch.long))
        return torch.nn.functional.cross_entropy(logits, targets[rows], label_smoothing=0.1)

    tuned = train_loop(model, lengths=[5] * 16, step_loss=step_loss, validate=lambda: (0.0, 0.5),
                       recipe=recipe(frozen=("word_embeddings",), optimizer_impl="fused"), seed=0, head_prefix="head.",
                       result=FineTuned(model, None, ["a", "b", "c"], "cpu", 8), label="test")
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, words)
    assert not torch.equal(model.encoder.encoder.layer[0].attention.self.query.weight, layer)
    assert tuned.history and tuned.epochs_run == pytest.approx(2.0)


def test_adamw_implementations_are_torch_keywords():
    assert adamw_impl("default") == {}
    assert adamw_impl("fused") == {"fused": True}
    param = torch.nn.Parameter(torch.ones(3))
    for impl in ("default", "foreach", "fused"):
        torch.optim.AdamW([param], lr=0.1, **adamw_impl(impl))
    with pytest.raises(KeyError):
        adamw_impl("sparse")


def test_the_embeddings_that_are_frozen_by_name():
    assert "word_embeddings" in FROZEN_EMBEDDINGS
