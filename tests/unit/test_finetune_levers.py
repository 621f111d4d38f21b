"""The recipe's accuracy-per-CPU-second levers: frozen embeddings, AdamW's implementation, label smoothing."""
import dataclasses

import pytest
import torch
from transformers import BertConfig, BertModel

from trainer.finetune import (FineTuned, PooledClassifier, adamw_impl, freeze, freeze_layers, layer_depths, param_groups,
                              small_loss, train_loop)
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


def train_on_toy_rows(model, recipe, label_smoothing: float = 0.0) -> FineTuned:
    """train_loop over 16 rows of 5 token ids, 3 labels, the recipe as given."""
    ids = [[1 + (i * 7 + j) % 39 for j in range(5)] for i in range(16)]
    targets = torch.tensor([i % 3 for i in range(16)])

    def step_loss(rows):
        logits = model(input_ids=torch.tensor([ids[r] for r in rows]),
                       attention_mask=torch.ones(len(rows), 5, dtype=torch.long))
        return torch.nn.functional.cross_entropy(logits, targets[rows], label_smoothing=label_smoothing)

    return train_loop(model, lengths=[5] * 16, step_loss=step_loss, validate=lambda: (0.0, 0.5), recipe=recipe,
                      seed=0, head_prefix="head.", result=FineTuned(model, None, ["a", "b", "c"], "cpu", 8),
                      label="test")


def test_a_frozen_matrix_is_unchanged_by_training_and_the_rest_learns():
    model = tiny_classifier()
    words = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    layer = model.encoder.encoder.layer[0].attention.self.query.weight.detach().clone()
    tuned = train_on_toy_rows(model, recipe(frozen=("word_embeddings",), optimizer_impl="fused"), label_smoothing=0.1)
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


def deep_classifier(layers: int = 3) -> PooledClassifier:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    return PooledClassifier(BertModel(config, add_pooling_layer=False), 3)


def test_layer_depths_put_the_embeddings_below_the_first_layer_and_the_head_apart():
    names = [n for n, _ in deep_classifier().named_parameters()]
    depths = layer_depths(names)
    assert depths["encoder.embeddings.word_embeddings.weight"] == 0
    assert depths["encoder.encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["encoder.encoder.layer.2.output.dense.bias"] == 3
    assert depths["head.weight"] == -1


def test_layer_decay_gives_the_top_layer_the_full_rate_and_each_layer_below_a_factor_less():
    model = deep_classifier()
    trained = list(model.named_parameters())
    groups = param_groups(trained, recipe(learning_rate=1e-3, head_learning_rate=5e-3, layer_decay=0.5), "head.")
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    by_name = dict(trained)
    assert rate[id(by_name["head.weight"])] == pytest.approx(5e-3)
    assert rate[id(by_name["encoder.encoder.layer.2.attention.self.query.weight"])] == pytest.approx(1e-3)
    assert rate[id(by_name["encoder.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(2.5e-4)
    assert rate[id(by_name["encoder.embeddings.position_embeddings.weight"])] == pytest.approx(1.25e-4)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(by_name["encoder.encoder.layer.0.attention.self.query.bias"])] == 0.0
    assert decay[id(by_name["encoder.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(0.01)
    flat = param_groups(trained, recipe(learning_rate=1e-3), "head.")
    assert len(flat) == 3 and {g["lr"] for g in flat} == {1e-3, 1e-2}  # decay, no decay, head


def test_freeze_layers_stops_the_embeddings_and_the_lowest_layers_only():
    model = deep_classifier()
    frozen = freeze_layers(model, 2)
    assert frozen > 0
    assert not model.encoder.embeddings.LayerNorm.weight.requires_grad
    assert not model.encoder.encoder.layer[1].output.dense.weight.requires_grad
    assert model.encoder.encoder.layer[2].output.dense.weight.requires_grad and model.head.weight.requires_grad
    assert freeze_layers(deep_classifier(), 0) == 0


def test_small_loss_leaves_out_the_highest_losses():
    losses = torch.tensor([0.1, 5.0, 0.3, 0.2, 9.0, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert small_loss(losses, 0.2).item() == pytest.approx(losses.sort().values[:8].mean().item())
    assert small_loss(losses, 0.0).item() == pytest.approx(losses.mean().item())
    assert small_loss(losses[:1], 0.9).item() == pytest.approx(0.1)  # at least one example counts


def test_train_loop_with_frozen_layers_leaves_the_embeddings_and_the_lowest_layers_as_they_were():
    model = deep_classifier(layers=3)
    words = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    low = model.encoder.encoder.layer[1].attention.self.query.weight.detach().clone()
    high = model.encoder.encoder.layer[2].attention.self.query.weight.detach().clone()
    train_on_toy_rows(model, recipe(frozen=FROZEN_EMBEDDINGS, optimizer_impl="fused", frozen_layers=2))
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, words)
    assert torch.equal(model.encoder.encoder.layer[1].attention.self.query.weight, low)
    assert not torch.equal(model.encoder.encoder.layer[2].attention.self.query.weight, high)
