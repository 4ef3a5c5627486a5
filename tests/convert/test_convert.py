"""``triton_embed.replace_embeddings`` on plain ``torch.nn`` models: what is replaced, what is kept, what is left."""
from __future__ import annotations

import copy
import logging
import sys
import types
import warnings

import pytest
import torch

import triton_embed
from _support.peers import needs


class Model(torch.nn.Module):
    """An embedding reached under two names, a Linear, an EmbeddingBag."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(20, 6, **options)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6), self.embed])
        self.bag = torch.nn.EmbeddingBag(20, 6)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.blocks[0](self.embed(ids))


class ScaledEmbedding(torch.nn.Embedding):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input) * 2.0


class InitOnlyEmbedding(torch.nn.Embedding):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.note = "custom"


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


OPTIONS = [
    {},
    {"padding_idx": 3},
    {"padding_idx": -1},
    {"max_norm": 0.5, "norm_type": 1.0},
    {"scale_grad_by_freq": True},
    {"sparse": True},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_same_parameter_options_and_outputs(options):
    torch.manual_seed(0)
    model = Model(**options)
    reference = copy.deepcopy(model)
    weight, keys = model.embed.weight, list(model.state_dict())
    assert _no_warnings(triton_embed.replace_embeddings, model) is model
    emb = model.embed
    assert type(emb) is triton_embed.Embedding and emb.weight is weight and model.blocks[1] is emb
    for name in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                 "sparse"):
        assert getattr(emb, name) == getattr(reference.embed, name), name
    assert list(model.state_dict()) == keys and type(model.bag) is torch.nn.EmbeddingBag
    ids = torch.tensor([[1, 3, 3, 19], [0, 3, 7, 7]])
    out, expected = emb(ids), reference.embed(ids)
    if "max_norm" in options:  # the renorm's scale may round differently from PyTorch's
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(out, expected)
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    torch.testing.assert_close(emb.weight.grad.to_dense(), reference.embed.weight.grad.to_dense(), rtol=1e-6, atol=0)
    torch.testing.assert_close(emb.weight, reference.embed.weight, rtol=1e-6, atol=1e-7)  # renormed alike


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_device_mode_and_frozen_weight_are_kept(dtype):
    emb = torch.nn.Embedding.from_pretrained(torch.randn(8, 4, dtype=dtype), freeze=True, padding_idx=1).eval()
    new = triton_embed.replace_embeddings(emb)  # a bare embedding: the new module is returned
    assert type(new) is triton_embed.Embedding and new.weight is emb.weight
    assert new.weight.dtype == dtype and not new.weight.requires_grad and not new.training
    on_meta = triton_embed.replace_embeddings(torch.nn.Embedding(8, 4, device="meta"), stable=True)
    assert on_meta.weight.device.type == "meta" and on_meta.norm.weight.device.type == "meta"


def test_optimizer_built_before_the_call_keeps_training_it():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8, padding_idx=0), torch.nn.Linear(8, 1))
    reference, initial = copy.deepcopy(model), model[0].weight.detach().clone()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=0.1) for m in (model, reference)]
    triton_embed.replace_embeddings(model)
    ids = torch.tensor([[0, 1, 2, 2, 15]])
    for _ in range(3):
        for m, opt in zip((model, reference), optimizers):
            m(ids).square().mean().backward()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(model[0].weight, reference[0].weight, rtol=1e-6, atol=1e-7)
    assert not torch.equal(model[0].weight[1:3], initial[1:3])  # the optimizer did update the converted table


def test_shared_module_becomes_one_new_module_and_is_logged_once(caplog):
    model = Model()
    with caplog.at_level(logging.INFO, logger="triton_embed"):
        triton_embed.replace_embeddings(model)
    assert model.embed is model.blocks[1] and type(model.embed) is triton_embed.Embedding
    lines = [r.getMessage() for r in caplog.records if r.name == "triton_embed"]
    assert lines == ["replaced embed, blocks.1: torch.nn.Embedding -> triton_embed.Embedding"]


def test_subclasses_are_left_alone_with_a_warning_naming_them():
    model = torch.nn.ModuleDict({"scaled": ScaledEmbedding(10, 4), "init_only": InitOnlyEmbedding(10, 4),
                                 "plain": torch.nn.Embedding(10, 4), "bag": torch.nn.EmbeddingBag(10, 4)})
    with pytest.warns(UserWarning, match="left these embeddings as they are") as record:
        triton_embed.replace_embeddings(model)
    message = str(record[0].message)
    assert "scaled (" in message and "ScaledEmbedding): with its own forward" in message
    assert "init_only (" in message and "InitOnlyEmbedding): a subclass" in message
    assert "plain" not in message and "bag" not in message
    assert type(model["scaled"]) is ScaledEmbedding and type(model["init_only"]) is InitOnlyEmbedding
    assert type(model["plain"]) is triton_embed.Embedding and type(model["bag"]) is torch.nn.EmbeddingBag


def test_altered_instances_are_left_alone_with_a_warning():
    patched = torch.nn.Embedding(10, 4)
    patched.forward = lambda ids: torch.zeros(())
    extra = torch.nn.Embedding(10, 4)
    extra.register_buffer("scale", torch.ones(()))
    model = torch.nn.ModuleDict({"patched": patched, "extra": extra})
    with pytest.warns(UserWarning) as record:
        triton_embed.replace_embeddings(model)
    message = str(record[0].message)
    assert "patched (torch.nn.Embedding): its forward is replaced" in message
    assert "extra (torch.nn.Embedding): it holds parameters or buffers" in message
    assert model["patched"] is patched and model["extra"] is extra


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_hooks_and_instance_attributes_come_along():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    seen = []
    handle = model[0].register_forward_hook(lambda module, args, out: seen.append(type(module)))
    model[0].register_full_backward_hook(lambda module, grad_in, grad_out: seen.append("backward"))
    model[0].custom_flag = True
    triton_embed.replace_embeddings(model)
    model(torch.tensor([1, 2])).sum().backward()
    assert seen == [triton_embed.Embedding, "backward"] and model[0].custom_flag
    handle.remove()  # the handle still reaches the (shared) hook dict
    model(torch.tensor([1]))
    assert seen == [triton_embed.Embedding, "backward"]


def test_triton_embed_modules_are_kept_and_deterministic_is_set():
    ours = triton_embed.StableEmbedding(10, 4)
    model = torch.nn.ModuleDict({"ours": ours, "plain": torch.nn.Embedding(10, 4)})
    triton_embed.replace_embeddings(model, stable=False, deterministic=True)
    assert model["ours"] is ours and ours.deterministic
    assert type(model["plain"]) is triton_embed.Embedding and model["plain"].deterministic
    assert "deterministic=True" in repr(model["plain"])


def test_stable_adds_exactly_a_float32_layer_norm():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Embedding(12, 8, padding_idx=0, dtype=torch.bfloat16)).eval()
    weight, keys = model[0].weight, set(model.state_dict())
    triton_embed.replace_embeddings(model, stable=True)
    emb = model[0]
    assert type(emb) is triton_embed.StableEmbedding and emb.weight is weight and emb.padding_idx == 0
    assert set(model.state_dict()) - keys == {"0.norm.weight", "0.norm.bias"} and keys <= set(model.state_dict())
    assert emb.norm.weight.dtype == torch.float32 and emb.norm.normalized_shape == (8,)
    assert not emb.training and not emb.norm.training
    ids = torch.tensor([[0, 3, 3, 11]])
    expected = torch.nn.functional.layer_norm(weight.detach()[ids].float(), (8,)).to(torch.bfloat16)
    torch.testing.assert_close(emb(ids), expected, rtol=1.6e-2, atol=1e-2)


def test_bitsandbytes_types_are_converted_when_it_is_loaded(monkeypatch):
    """bitsandbytes' classes are recognised by identity in the loaded ``bitsandbytes.nn``; here a stand-in."""
    class Embedding(torch.nn.Embedding):  # the shape of bitsandbytes.nn.Embedding / StableEmbedding
        def forward(self, input):
            return torch.nn.functional.embedding(input, self.weight, self.padding_idx)

    class StableEmbedding(Embedding):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.norm = torch.nn.LayerNorm(self.embedding_dim)

    monkeypatch.setitem(sys.modules, "bitsandbytes.nn", types.SimpleNamespace(
        Embedding=Embedding, StableEmbedding=StableEmbedding))
    model = torch.nn.ModuleDict({"plain": Embedding(10, 4, padding_idx=1), "stable": StableEmbedding(10, 4)})
    norm = model["stable"].norm
    _no_warnings(triton_embed.replace_embeddings, model)
    assert type(model["plain"]) is triton_embed.Embedding and model["plain"].padding_idx == 1
    assert type(model["stable"]) is triton_embed.StableEmbedding and model["stable"].norm is norm
    again = torch.nn.ModuleDict({"plain": Embedding(10, 4)})
    triton_embed.replace_embeddings(again, stable=True)
    assert type(again["plain"]) is triton_embed.StableEmbedding
    monkeypatch.delitem(sys.modules, "bitsandbytes.nn")
    with pytest.warns(UserWarning, match="with its own forward"):  # without bitsandbytes: just a subclass
        triton_embed.replace_embeddings(torch.nn.ModuleDict({"plain": Embedding(10, 4)}))


@needs("bitsandbytes")
def test_bitsandbytes_modules_are_replaced_keeping_their_layer_norm():
    import bitsandbytes as bnb

    torch.manual_seed(3)
    model = torch.nn.ModuleDict({"plain": bnb.nn.Embedding(10, 4, padding_idx=1),
                                 "stable": bnb.nn.StableEmbedding(10, 4, max_norm=1.0)})
    reference = copy.deepcopy(model)
    weights, norm = {k: model[k].weight for k in ("plain", "stable")}, model["stable"].norm
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        triton_embed.replace_embeddings(model)
    assert not [w for w in record if "left these embeddings" in str(w.message)]
    assert type(model["plain"]) is triton_embed.Embedding and type(model["stable"]) is triton_embed.StableEmbedding
    assert all(model[k].weight is weight for k, weight in weights.items()) and model["stable"].norm is norm
    assert model["plain"].padding_idx == 1 and model["stable"].max_norm == 1.0
    ids = torch.tensor([[1, 2, 9]])
    for key in ("plain", "stable"):
        torch.testing.assert_close(model[key](ids), reference[key](ids), rtol=1e-5, atol=1e-6)
