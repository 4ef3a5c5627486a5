"""The quantized modules: bitsandbytes' constructors, quantization on request, dtype casts that keep the
scales, state_dict round trips (and float checkpoints), ``from_float``, ``replace_embeddings(quantize=...)``."""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from _support.quantized import FORMATS, quantized_class

import triton_embed


def _make(fmt: str, rows: int = 12, dim: int = 65, dtype=torch.float32, stable: bool = False, **options):
    cls, format_options = quantized_class(fmt, stable)
    return cls(rows, dim, dtype=dtype, **format_options, **options)


def _quantized_state(module) -> list[torch.Tensor]:
    codes, scales, quant_map, _ = module._state()
    return [t for t in (codes, scales, quant_map) if t is not None]


def test_bitsandbytes_constructors():
    """bitsandbytes' signatures, positional as it orders them, with keyword-only extras."""
    assert triton_embed.Embedding8bit(5, 3, "cpu", torch.bfloat16).dtype == torch.bfloat16
    emb = triton_embed.Embedding4bit(5, 3, torch.float16, "nf4", torch.uint8, "cpu", blocksize=32, padding_idx=-1)
    assert (emb.dtype, emb.quant_type, emb.blocksize, emb.padding_idx) == (torch.float16, "nf4", 32, 4)
    assert not emb.weight[4].any() and not emb.weight.requires_grad and not emb.is_quantized
    assert triton_embed.EmbeddingNF4(5, 3, torch.bfloat16).quant_type == "nf4"
    assert triton_embed.EmbeddingFP4(5, 3).quant_type == "fp4"
    stable = triton_embed.StableEmbedding4bit(5, 3, torch.bfloat16)
    assert stable.norm.weight.dtype == torch.float32 and stable.norm.weight.requires_grad
    with pytest.raises(ValueError):
        triton_embed.Embedding4bit(5, 3, quant_type="int4")
    with pytest.raises(ValueError):
        triton_embed.Embedding8bit(5, 3, padding_idx=5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_is_idempotent_and_frozen(fmt):
    emb = _make(fmt)
    table = emb.weight.detach().clone()
    assert emb.quantize() is emb and emb.is_quantized
    state = [t.clone() for t in _quantized_state(emb)]
    emb.quantize()
    assert all(torch.equal(a, b) for a, b in zip(state, _quantized_state(emb)))
    assert not any(p.requires_grad for p in [emb.weight])
    error = (emb.dequantize() - table).abs().max()
    assert error <= table.abs().max() / (127 if fmt == "int8" else 2)
    with pytest.raises(RuntimeError, match="quantized"):
        emb.reset_parameters()


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtype_casts_keep_the_scales(fmt):
    emb = _make(fmt, stable=True).quantize()
    state = [t.clone() for t in _quantized_state(emb)]
    ids = torch.tensor([[0, 5, 11]])
    expected = emb(ids)
    emb.half()
    assert emb.dtype == torch.float16 and emb(ids).dtype == torch.float16
    emb.to(torch.bfloat16).float()
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(state, _quantized_state(emb)))
    emb.norm.float()
    assert torch.equal(emb(ids), expected)
    emb.to("meta")
    assert emb.weight.is_meta and all(t.is_meta for t in _quantized_state(emb))


@pytest.mark.parametrize("fmt", FORMATS)
def test_moves_without_cuda_do_not_quantize(fmt):
    emb = _make(fmt).cpu().float()
    assert not emb.is_quantized and emb.weight.dtype == torch.float32
    emb.to(torch.bfloat16)
    assert emb.weight.dtype == torch.bfloat16 and emb.dtype == torch.bfloat16
    assert emb.quantize().is_quantized


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", FORMATS)
def test_moving_to_cuda_quantizes(fmt):
    emb = _make(fmt)
    table = emb.weight.detach().clone()
    emb = emb.cuda()
    assert emb.is_quantized and emb.weight.is_cuda
    expected = _make(fmt, _weight=table).quantize()
    assert all(torch.equal(a.cpu(), b) for a, b in zip(_quantized_state(emb), _quantized_state(expected)))


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_round_trip(fmt, stable):
    emb = _make(fmt, dtype=torch.bfloat16, stable=stable).quantize()
    state = emb.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # safetensors-compatible
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    fresh = _make("nf4" if fmt == "fp4" else fmt, dtype=torch.float32, stable=stable)  # not quantized, other format
    fresh.load_state_dict(loaded)
    assert fresh.is_quantized
    assert all(torch.equal(a, b) for a, b in zip(_quantized_state(emb), _quantized_state(fresh)))
    ids = torch.tensor([[1, 2], [11, 0]])
    if fmt != "int8":
        assert (fresh.quant_type, fresh.blocksize) == (fmt, 64)  # the codes' format comes with them
    assert fresh.dtype == torch.float32  # the output dtype stays the module's
    fresh.to(torch.bfloat16)
    assert torch.equal(fresh(ids), emb(ids))
    assert sorted(fresh.state_dict()) == sorted(state)


def test_4bit_quant_storage_round_trip():
    emb = triton_embed.Embedding4bit(6, 8, quant_type="nf4", quant_storage=torch.bfloat16).quantize()
    state = emb.state_dict()
    assert state["weight"].dtype == torch.bfloat16 and state["weight"].shape == (12, 1)
    fresh = triton_embed.Embedding4bit(6, 8)
    fresh.load_state_dict(state)
    assert fresh.quant_storage == torch.bfloat16 and torch.equal(fresh.weight, emb.weight)
    with pytest.raises(ValueError, match="packed bytes"):
        triton_embed.Embedding4bit(5, 5, quant_storage=torch.bfloat16).quantize()  # 13 bytes


@pytest.mark.parametrize("fmt", FORMATS)
def test_float_checkpoints_load_and_quantize(fmt):
    """A torch.nn.Embedding state_dict loads as a float table (quantized at once into a quantized module)."""
    source = torch.nn.Embedding(12, 65)
    expected = _make(fmt, _weight=source.weight.detach().clone()).quantize()
    unquantized = _make(fmt)
    unquantized.load_state_dict(source.state_dict())
    assert not unquantized.is_quantized and torch.equal(unquantized.weight, source.weight)
    quantized = _make(fmt).quantize()
    quantized.load_state_dict(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(_quantized_state(quantized), _quantized_state(expected)))
    loose = quantized.load_state_dict({**expected.state_dict(), "other": torch.zeros(1)}, strict=False)
    assert loose.unexpected_keys == ["other"] and loose.missing_keys == []
    with pytest.raises(RuntimeError, match="size mismatch"):
        quantized.load_state_dict({"weight": torch.zeros(3, 3)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        quantized.load_state_dict({**expected.state_dict(), "other": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key"):
        _make(fmt).load_state_dict({})


@pytest.mark.parametrize("fmt", FORMATS)
def test_from_float_sources(fmt):
    cls = triton_embed.Embedding8bit if fmt == "int8" else triton_embed.Embedding4bit
    stable_cls = triton_embed.StableEmbedding8bit if fmt == "int8" else triton_embed.StableEmbedding4bit
    options = {} if fmt == "int8" else {"quant_type": fmt}
    for source in (torch.nn.Embedding(9, 6, padding_idx=2), triton_embed.Embedding(9, 6, padding_idx=2),
                   triton_embed.StableEmbedding(9, 6, padding_idx=2, dtype=torch.bfloat16)):
        table = source.weight.detach().clone()
        emb = cls.from_float(source, **options)
        assert emb.is_quantized and emb.padding_idx == 2 and emb.dtype == table.dtype
        assert torch.equal(source.weight, table)  # the source is left as it was
        expected = cls(9, 6, _weight=table.clone(), **options).quantize()
        assert all(torch.equal(a, b) for a, b in zip(_quantized_state(emb), _quantized_state(expected)))
        stable = stable_cls.from_float(source, **options)
        if isinstance(source, triton_embed.StableEmbedding):
            assert stable.norm is source.norm
        else:
            assert stable.norm.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="max_norm"):
        cls.from_float(torch.nn.Embedding(4, 4, max_norm=1.0), **options)
    with pytest.raises(TypeError, match="quantized already"):
        cls.from_float(cls.from_float(torch.nn.Embedding(4, 4), **options), **options)
    if fmt != "int8":
        nf4 = triton_embed.EmbeddingNF4.from_float(torch.nn.Embedding(4, 4), blocksize=32)
        assert type(nf4) is triton_embed.EmbeddingNF4 and nf4.blocksize == 32


def test_deepcopy_keeps_the_quantized_state():
    emb = triton_embed.StableEmbedding4bit(7, 9, quant_type="nf4").quantize()
    twin = copy.deepcopy(emb)
    ids = torch.tensor([3, 4])
    assert torch.equal(twin(ids), emb(ids)) and twin.absmax.data_ptr() != emb.absmax.data_ptr()


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(20, 6, padding_idx=0)
        self.stable = triton_embed.StableEmbedding(20, 6)
        self.renormed = torch.nn.Embedding(20, 6, max_norm=1.0)
        self.head = torch.nn.Linear(6, 2)


@pytest.mark.parametrize("quantize_as", FORMATS)
def test_replace_embeddings_quantizes(quantize_as):
    model = _Model().eval()
    calls = []
    model.embed.register_forward_hook(lambda *args: calls.append(1))
    table = model.embed.weight.detach().clone()
    norm = model.stable.norm
    with pytest.warns(UserWarning, match="renormed .*max_norm"):
        triton_embed.replace_embeddings(model, quantize=quantize_as)
    plain = triton_embed.Embedding8bit if quantize_as == "int8" else triton_embed.Embedding4bit
    stable = triton_embed.StableEmbedding8bit if quantize_as == "int8" else triton_embed.StableEmbedding4bit
    assert type(model.embed) is plain and type(model.stable) is stable and type(model.renormed) is torch.nn.Embedding
    assert model.stable.norm is norm and model.embed.padding_idx == 0 and not model.embed.training
    if quantize_as != "int8":
        assert model.embed.quant_type == quantize_as
    model.embed(torch.tensor([1, 2]))
    assert calls == [1]
    expected = plain.from_float(torch.nn.Embedding(20, 6, _weight=table), **(
        {} if quantize_as == "int8" else {"quant_type": quantize_as}))
    assert all(torch.equal(a, b) for a, b in zip(_quantized_state(model.embed), _quantized_state(expected)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = triton_embed.replace_embeddings(torch.nn.Sequential(model.embed, model.stable), quantize="nf4")
    assert again[0] is model.embed and again[1] is model.stable  # quantized modules are left alone
    with pytest.raises(ValueError, match="quantize"):
        triton_embed.replace_embeddings(model, quantize="int4")


def test_replace_embeddings_stable_quantized_and_bare_module():
    new = triton_embed.replace_embeddings(torch.nn.Embedding(10, 4), quantize="int8", stable=True)
    assert type(new) is triton_embed.StableEmbedding8bit
    assert sorted(new.state_dict()) == ["SCB", "norm.bias", "norm.weight", "weight", "weight_format"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_meta_module_takes_the_checkpoint(fmt):
    """Built on the meta device (no memory), then loaded with assign=True, as large models are."""
    emb = _make(fmt, stable=True).quantize()
    with torch.device("meta"):
        empty = _make("fp4" if fmt == "nf4" else fmt, stable=True)
    empty.load_state_dict(emb.state_dict(), assign=True)
    ids = torch.tensor([[3, 0, 11]])
    assert not empty.weight.is_meta and not empty.norm.weight.is_meta
    assert torch.equal(empty(ids), emb(ids))


def test_load_state_dict_pre_hooks_run():
    emb = triton_embed.Embedding8bit(4, 3).quantize()
    state = emb.state_dict()
    seen = []
    fresh = triton_embed.Embedding8bit(4, 3)
    fresh._register_load_state_dict_pre_hook(lambda sd, prefix, *args: seen.append(sorted(sd)))
    fresh.load_state_dict(state)
    assert seen == [sorted(state)] and fresh.is_quantized


@pytest.mark.parametrize("fmt", FORMATS)
def test_stable_norm_hooks_fire(fmt):
    """A hook on ``norm`` makes the quantized StableEmbedding call it (bitsandbytes' graph), with the fused
    result; another norm module is called too."""
    emb = _make(fmt, stable=True).quantize()
    ids = torch.tensor([[0, 5, 11]])
    fused = emb(ids)
    seen = []
    handle = emb.norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        torch.testing.assert_close(emb(ids), fused, rtol=1e-6, atol=1e-6)
    finally:
        handle.remove()
    assert seen == [torch.float32]
    emb.norm = torch.nn.Identity()
    assert torch.equal(emb(ids), emb.dequantize()[ids])


def test_4bit_checkpoints_bring_their_format_not_their_dtype():
    saved = _make("fp4", dtype=torch.float32).quantize().state_dict()
    nf4 = triton_embed.EmbeddingNF4(12, 65, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="quant_type='fp4'"):  # the shorthand class stands for nf4
        nf4.load_state_dict(saved)
    assert nf4.quant_type == "nf4" and not nf4.is_quantized
    generic = triton_embed.Embedding4bit(12, 65, dtype=torch.bfloat16, quant_type="nf4", blocksize=128)
    generic.load_state_dict(saved)
    assert (generic.quant_type, generic.blocksize, generic.dtype) == ("fp4", 64, torch.bfloat16)
    assert generic(torch.tensor([3])).dtype == torch.bfloat16


def test_replace_embeddings_quantizes_a_shared_table_once_and_warns_about_a_tied_head():
    """Three embeddings holding one table (T5's shared / encoder / decoder) become one quantized module; a
    head still tied to the float table is named in a warning (the model would hold both)."""

    class Shared(torch.nn.Module):
        def __init__(self, tied_head: bool):
            super().__init__()
            self.shared = torch.nn.Embedding(40, 64)
            self.encoder, self.decoder = torch.nn.Embedding(40, 64), torch.nn.Embedding(40, 64)
            self.encoder.weight = self.decoder.weight = self.shared.weight
            self.head = torch.nn.Linear(64, 40, bias=False)
            if tied_head:
                self.head.weight = self.shared.weight

    model = Shared(tied_head=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = triton_embed.replace_embeddings(model, quantize="nf4")
    assert type(model.shared) is triton_embed.Embedding4bit and model.encoder is model.shared is model.decoder
    with pytest.warns(UserWarning, match="shared, encoder, decoder tied to head.weight"):
        triton_embed.replace_embeddings(Shared(tied_head=True), quantize="int8")
