"""What happens to a quantized table module around its data: dtype casts (one outcome whatever the order),
moves that follow the tensors (``to_empty``, ``share_memory``), copies, the meta device (``from_float`` and
``replace_embeddings`` of a model built there, quantized once loaded), and a StableEmbedding's own norm."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from _support.quantized import FORMATS, quantized_class

import triton_embed
from triton_embed.quantized import base as _quantized_module

V, D = 8, 6


def _make(fmt: str, stable: bool = False, **options):
    cls, format_options = quantized_class(fmt, stable)
    return cls(V, D, **format_options, **options)


def _tensors(module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


IDS = torch.tensor([[0, 7, 3], [3, 5, 1]])


@pytest.mark.parametrize("quantize_first", [True, False])
@pytest.mark.parametrize("cast", ["double", "to_float64", "type_float64", "to_complex"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_cast_the_formats_cannot_give_is_refused_in_either_order(fmt, cast, quantize_first):
    """``.double()`` and the like: refused before anything changes, whether the table is quantized yet or not
    (it was ignored after quantize() and broke the first forward before it)."""
    module = _make(fmt, stable=True)
    if quantize_first:
        module.quantize()
    before, dtype = _tensors(module), module.dtype
    apply = {"double": lambda m: m.double(), "to_float64": lambda m: m.to(torch.float64),
             "type_float64": lambda m: m.type(torch.float64), "to_complex": lambda m: m.to(torch.complex64)}[cast]
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        apply(module)
    assert module.dtype == dtype and _same(_tensors(module), before)
    out = module(IDS)  # still works, and quantizes if it had not yet
    assert out.dtype == torch.float32 and module.is_quantized


@pytest.mark.parametrize("fmt", FORMATS)
def test_casts_change_the_output_dtype_never_the_codes_or_scales(fmt):
    """``.half()``, ``.to(bfloat16)``, ``.type(float16)`` (which would cast every tensor): the codes and the
    float32 scales stay bitwise; only the rows' dtype changes."""
    module = _make(fmt).quantize()
    before = _tensors(module)
    expected = module(IDS)
    for cast, dtype in [(lambda m: m.half(), torch.float16), (lambda m: m.to(torch.bfloat16), torch.bfloat16),
                        (lambda m: m.type(torch.float16), torch.float16), (lambda m: m.float(), torch.float32)]:
        cast(module)
        assert module.dtype == dtype and _same(_tensors(module), before)
        assert torch.equal(module(IDS), expected.to(dtype))


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_to_empty_share_memory_and_copies_follow_every_tensor(fmt, stable):
    module = _make(fmt, stable=stable).quantize()
    expected = module(IDS)
    empty = copy.deepcopy(module).to("meta").to_empty(device="cpu")  # scales too: no copy out of meta
    assert empty.is_quantized and all(not t.is_meta for t in _tensors(empty).values())
    empty.load_state_dict(module.state_dict())
    assert torch.equal(empty(IDS), expected)
    shared = copy.deepcopy(module).share_memory()
    assert all(t.is_shared() for t in [*shared.parameters(), *shared.buffers()])
    for twin in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert _same(_tensors(twin), _tensors(module)) and torch.equal(twin(IDS), expected)


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_from_float_on_the_meta_device_quantizes_once_loaded(fmt, stable):
    """A model built on the meta device (as ``from_pretrained`` builds it) converts: an unquantized module on the
    meta device, quantized once a float table is loaded (assign=True, or to_empty then load_state_dict)."""
    cls, options = quantized_class(fmt, stable)
    source = torch.nn.Embedding(V, D, padding_idx=1)
    expected = cls.from_float(source, **options)
    with torch.device("meta"):
        meta_source = torch.nn.Embedding(V, D, padding_idx=1)
    table = {"weight": source.weight.detach().clone()}
    if stable:
        table |= {"norm.weight": torch.ones(D), "norm.bias": torch.zeros(D)}
    for load in ("assign", "to_empty"):
        module = cls.from_float(meta_source, **options)
        assert module.weight.is_meta and not module.is_quantized and module.padding_idx == 1
        with pytest.raises(RuntimeError, match="not quantized yet"):
            module(IDS)
        if load == "assign":
            module.load_state_dict(table, assign=True)
        else:
            module.to_empty(device="cpu").to_empty(device="cpu")  # twice, as a module under two names is moved
            assert not module.is_quantized  # the placeholder values are never quantized
            module.load_state_dict(table)
        assert module.is_quantized and not module.weight.is_meta
        assert _same(_tensors(module), _tensors(expected)) and torch.equal(module(IDS), expected(IDS))


def test_replace_embeddings_of_a_meta_model():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Embedding(V, D), triton_embed.StableEmbedding(V, D))
    for fmt in FORMATS:
        converted = triton_embed.replace_embeddings(copy.deepcopy(model), quantize=fmt)
        plain, stable = converted
        assert not plain.is_quantized and plain.weight.is_meta and stable.norm.weight.is_meta
        state = {"0.weight": torch.randn(V, D), "1.weight": torch.randn(V, D), "1.norm.weight": torch.ones(D),
                 "1.norm.bias": torch.zeros(D)}
        converted.load_state_dict(state, assign=True)
        assert plain.is_quantized and stable.is_quantized
        cls, options = quantized_class(fmt)
        expected = cls.from_float(torch.nn.Embedding(V, D, _weight=state["0.weight"]), **options)
        assert torch.equal(plain.dequantize(), expected.dequantize())


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_on_the_meta_device_gives_the_layout(fmt):
    """``quantize()`` of a module on the meta device: meta codes and scales of the right shapes (no values to
    check), ready for a quantized checkpoint with assign=True."""
    with torch.device("meta"):
        module = _make(fmt).quantize()
    reference = _make(fmt).quantize()
    assert module.is_quantized
    assert {k: (tuple(t.shape), t.dtype) for k, t in _tensors(module).items()} == \
        {k: (tuple(t.shape), t.dtype) for k, t in _tensors(reference).items()}
    module.load_state_dict(reference.state_dict(), assign=True)
    assert torch.equal(module(IDS), reference(IDS))


@pytest.mark.parametrize("fmt", FORMATS)
def test_from_float_keeps_a_stable_embeddings_own_norm(fmt):
    """A StableEmbedding whose norm was replaced (an RMSNorm, as the README allows) keeps it: the quantized
    module computes what the float one does, up to the table's quantization."""
    source = triton_embed.StableEmbedding(V, D)
    source.norm = torch.nn.RMSNorm(D)
    with torch.no_grad():
        source.norm.weight.uniform_(0.5, 2.0)
    cls, options = quantized_class(fmt, stable=True)
    module = cls.from_float(source, **options)
    assert module.norm is source.norm
    dequantized = triton_embed.StableEmbedding(V, D, _weight=module.dequantize())
    dequantized.norm = source.norm
    torch.testing.assert_close(module(IDS), dequantized(IDS), rtol=1e-6, atol=1e-6)
    source.norm = None
    with pytest.raises(TypeError, match="norm"):
        cls.from_float(source, **options)


@pytest.mark.parametrize("quantize_first", [True, False])
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_table_is_frozen_in_either_order(fmt, quantize_first):
    """``requires_grad_()`` asks the table for gradients: refused whether it is quantized yet or not (before, an
    unquantized table took the flag and lost it when quantized; a quantized one raised PyTorch's dtype error)."""
    module = _make(fmt, stable=True)
    if quantize_first:
        module.quantize()
    with pytest.raises(RuntimeError, match="frozen"):
        module.requires_grad_()
    assert not module.weight.requires_grad and module.norm.weight.requires_grad
    module.requires_grad_(False)
    assert not any(p.requires_grad for p in module.parameters())
    module.norm.requires_grad_()
    module(IDS).sum().backward()
    assert module.norm.weight.grad is not None and module.is_quantized and not module.weight.requires_grad


def test_replace_embeddings_names_a_table_it_cannot_quantize_and_replaces_nothing():
    model = torch.nn.Sequential(torch.nn.Embedding(V, D), torch.nn.Embedding(V, D))
    with torch.no_grad():
        model[1].weight[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"cannot quantize 1 \(torch.nn.Embedding\).*nothing was replaced"):
        triton_embed.replace_embeddings(model, quantize="nf4")
    assert [type(m) for m in model] == [torch.nn.Embedding, torch.nn.Embedding]


@pytest.mark.parametrize("fmt", FORMATS)
def test_moves_quantize_a_table_but_never_a_placeholder(fmt, monkeypatch):
    """A move to CUDA quantizes a float table (the CPU stands in for CUDA here), but not a table that came off
    the meta device by to_empty (no values yet; a module under several names is moved once per name)."""
    monkeypatch.setattr(_quantized_module, "QUANTIZING_DEVICES", ("cuda", "cpu"))
    moved = _make(fmt)
    table = moved.weight.detach().clone()
    moved.to("cpu")
    assert moved.is_quantized
    assert torch.equal(moved.dequantize(), _make(fmt, _weight=table).quantize().dequantize())
    cls, options = quantized_class(fmt)
    with torch.device("meta"):
        source = torch.nn.Embedding(V, D)
    for placeholder in (cls.from_float(source, **options), _make(fmt, device="meta")):
        placeholder.to_empty(device="cpu").to_empty(device="cpu").to("cpu")
        assert not placeholder.is_quantized
        placeholder.load_state_dict({"weight": table})
        assert placeholder.is_quantized and torch.equal(placeholder.dequantize(), moved.dequantize())
    assigned = _make(fmt, device="meta")  # a module built on the meta device takes a float table the same way
    assigned.load_state_dict({"weight": table}, assign=True)
    assert assigned.is_quantized and torch.equal(assigned.dequantize(), moved.dequantize())
