"""Loading state into the quantized tables is all or nothing: whatever a checkpoint holds (a float table the
format cannot hold, an entry of the wrong shape or dtype, a missing scale, a malformed 4-bit record), a load
that fails raises ``load_state_dict``'s ``RuntimeError`` naming the key and leaves the module exactly as it
was; a missing table names every key the module saves; a module under several names saves no buffer twice."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from _support.peers import needs
from _support.quantized import FORMATS, quantized_class

import triton_embed

V, D = 6, 5


def _make(fmt: str, stable: bool = False, **options):
    cls, format_options = quantized_class(fmt, stable)
    return cls(V, D, **format_options, **options)


def _snapshot(module) -> dict:
    """Everything a load may change: tensors (with their dtype and device) and the format attributes."""
    tensors = {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}
    attributes = {k: getattr(module, k, None) for k in ("dtype", "quant_type", "blocksize", "quant_storage")}
    return {"tensors": tensors, "attributes": attributes, "quantized": module.is_quantized}


def _assert_unchanged(module, before: dict) -> None:
    after = _snapshot(module)
    assert after["quantized"] == before["quantized"] and after["attributes"] == before["attributes"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, tensor in before["tensors"].items():
        got = after["tensors"][name]
        # bit for bit: a table fresh from to_empty holds whatever the memory held, NaNs included
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(_bits(got), _bits(tensor)), name


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _failed_load(module, state: dict, key: str, words: str = "") -> None:
    """``load_state_dict(state)`` raises its RuntimeError, which names ``key`` (quoted, or opening a line) and
    says ``words``, and changes nothing."""
    before = _snapshot(module)
    with pytest.raises(RuntimeError, match="Error.s. in loading state_dict") as info:
        module.load_state_dict(state)
    message = str(info.value)
    assert re.search(rf'(^\s*|"){re.escape(key)}(:|")', message, re.M) and words in message, (key, message)
    _assert_unchanged(module, before)


@pytest.mark.parametrize("quantized", [True, False], ids=["quantized", "from_float_on_meta"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e5], ids=["nan", "inf", "huge"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_float_table_that_cannot_be_quantized_changes_nothing(fmt, bad, quantized):
    """The float table is quantized before anything is replaced: a table the format cannot hold (NaN, inf; the
    int8 format casts to float16 first, so |x| > 65504 too) leaves the codes and scales as they were."""
    if fmt != "int8" and bad == 1e5:
        bad = -float("inf")  # 1e5 is a fine 4-bit value
    if quantized:
        module = _make(fmt).quantize()
    else:  # from_float on the meta device, then moved off it: quantizes the table it is given
        cls = triton_embed.Embedding8bit if fmt == "int8" else triton_embed.Embedding4bit
        module = cls.from_float(torch.nn.Embedding(V, D, device="meta"),
                                **({} if fmt == "int8" else {"quant_type": fmt})).to_empty(device="cpu")
    table = torch.randn(V, D)
    table[2, 3] = bad
    _failed_load(module, {"weight": table}, "weight", "cannot be quantized")
    assert module.is_quantized == quantized
    good = torch.randn(V, D)
    module.load_state_dict({"weight": good})  # and the module still loads a good one
    expected = _make(fmt, _weight=good).quantize()
    assert module.is_quantized and torch.equal(module.dequantize(), expected.dequantize())


def _state(fmt: str) -> dict:
    return _make(fmt).quantize().state_dict()


def _bad_entries(fmt: str) -> list[tuple[dict, str]]:
    """(a checkpoint of ``fmt`` with one thing wrong, the key its error must name)."""
    good = _state(fmt)

    def without(key: str, **replaced) -> dict:
        return {**{k: v for k, v in good.items() if k != key}, **replaced}

    cases = [(without(key, **{key: good[key].reshape(-1)[:-1]}), key) for key in good if good[key].dim()]
    cases += [(without(key), re.sub("__.*", "__<nf4|fp4>", key)) for key in good if key != "weight_format"]
    if fmt == "int8":
        return cases + [(without("weight", weight=good["weight"].to(torch.int16)), "weight"),
                        (without("SCB", SCB=good["SCB"].long()), "SCB"),
                        (without("weight_format", weight_format=torch.zeros(2, dtype=torch.uint8)), "weight_format"),
                        (without("weight_format", weight_format=torch.tensor(1, dtype=torch.uint8)), "weight_format")]
    key = f"weight.quant_state.bitsandbytes__{fmt}"
    record = good[key]
    fields = json.loads(bytes(record.tolist()))

    def text(value) -> torch.Tensor:
        return torch.tensor(list(value.encode() if isinstance(value, str) else value), dtype=torch.uint8)

    cases += [(without("weight.absmax", **{"weight.absmax": good["weight.absmax"].long()}), "weight.absmax"),
              (without("weight.quant_map", **{"weight.quant_map": good["weight.quant_map"].half()[:8]}),
               "weight.quant_map"),
              ({**good, "weight.nested_absmax": torch.ones(1)}, "weight.nested_absmax"),
              (without(key, **{key: record[:-5]}), key),  # truncated: not JSON
              (without(key, **{key: record.float()}), key),  # not bytes
              (without(key, **{key: record.view(1, -1)}), key),  # not 1-D
              (without(key, **{key: text("[1, 2]")}), key),  # not an object
              (without(key, **{key: text(b"\xff\xfe")}), key)]  # not UTF-8
    for field, value in [("dtype", "float128"), ("blocksize", "64"), ("blocksize", 48), ("shape", "6x5"),
                         ("shape", [D, V]), ("quant_type", "int4")]:
        cases.append((without(key, **{key: text(json.dumps({**fields, field: value}))}), key))
    other = f"weight.quant_state.bitsandbytes__{'fp4' if fmt == 'nf4' else 'nf4'}"
    cases.append((without(key, **{other: record}), other))  # the key names another type than the record
    return cases


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_bad_entry_is_refused_by_name_and_changes_nothing(fmt):
    """Each entry of the format's checkpoint wrong in shape, dtype or content, or missing: the error names the
    key, and a quantized module (for the 4-bit formats, of the other type and block size: a half-done load
    would show) is left exactly as it was."""
    for state, key in _bad_entries(fmt):
        target = _make(fmt) if fmt == "int8" else _make("fp4" if fmt == "nf4" else "nf4", blocksize=32)
        _failed_load(target.quantize(), state, key)


def test_a_truncated_record_names_its_key():
    """The reviewer's case: a cut 4-bit record is the loader's error, naming the key, not a JSONDecodeError."""
    state = _state("nf4")
    key = "weight.quant_state.bitsandbytes__nf4"
    state[key] = state[key][:-7]
    module = triton_embed.Embedding4bit(V, D)
    with pytest.raises(RuntimeError, match=f"{key}: a 4-bit quant state record is not valid UTF-8 JSON"):
        module.load_state_dict(state)
    assert not module.is_quantized


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_missing_table_names_every_key_the_module_saves(fmt):
    module = _make(fmt).quantize()
    result = module.load_state_dict({}, strict=False)
    assert sorted(result.missing_keys) == sorted(module.state_dict())
    result = _make(fmt).load_state_dict({}, strict=False)  # not quantized: a float table
    assert result.missing_keys == ["weight"]


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_module_under_three_names_saves_no_buffer_twice(fmt, stable):
    """T5 holds one embedding as shared, encoder.embed_tokens and decoder.embed_tokens: state_dict gives each
    name its own tensors (no storage shared between names except the tied weight's and the 4-bit scales
    under it, which Hugging Face drops with the tied weight), and they load back."""
    embedding = _make(fmt, stable=stable).quantize()
    model = torch.nn.Module()
    model.shared = model.encoder = model.decoder = embedding
    state = model.state_dict()
    owners: dict[int, list[str]] = {}
    for key, value in state.items():
        owners.setdefault(value.data_ptr(), []).append(key)
    shared = [sorted(keys) for keys in owners.values() if len(keys) > 1]
    allowed = ("weight", "weight.absmax", "weight.quant_map", "norm.weight", "norm.bias")
    for keys in shared:
        names = {key.split(".", 1)[1] for key in keys}
        assert len(names) == 1 and names <= set(allowed), keys
    fresh = copy.deepcopy(model)
    fresh.shared.load_state_dict(_make(fmt, stable=stable).quantize().state_dict())
    fresh.load_state_dict(state)
    ids = torch.tensor([[0, 5, 3]])
    assert torch.equal(fresh.shared(ids), embedding(ids))
    assert state["shared.SCB" if fmt == "int8" else "shared.weight.absmax"].data_ptr() == \
        (embedding.SCB if fmt == "int8" else embedding.absmax).data_ptr()  # the first name keeps the buffer


@pytest.mark.parametrize("fmt", FORMATS)
def test_assign_loads_all_or_nothing_too(fmt):
    module = _make(fmt).quantize()
    before = _snapshot(module)
    state = _state(fmt)
    state["weight"] = state["weight"][:-1]
    with pytest.raises(RuntimeError, match="weight"):
        module.load_state_dict(state, assign=True)
    _assert_unchanged(module, before)
    source = _make("nf4" if fmt == "fp4" else fmt).quantize()
    module.load_state_dict(source.state_dict(), assign=True)
    assert torch.equal(module.dequantize(), source.dequantize())


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_entries_are_unexpected_keys(fmt):
    """A key beside the format's own (``weight.foo``, another format's ``SCB``) is reported, not swallowed."""
    state = _state(fmt)
    extra = {"weight.foo": torch.ones(1), ("weight.absmax" if fmt == "int8" else "SCB"): torch.ones(V)}
    result = _make(fmt).load_state_dict({**state, **extra}, strict=False)
    assert sorted(result.unexpected_keys) == sorted(extra) and not result.missing_keys


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)  # bitwise (a packed bf16 may be a NaN)


@needs("bitsandbytes")
@pytest.mark.parametrize("quant_storage", [torch.uint8, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt", FORMATS)
def test_bitsandbytes_own_checkpoints_load_and_save_back_byte_for_byte(fmt, quant_storage):
    """A state_dict bitsandbytes' Linear8bitLt / Linear4bit saves (the layouts ours uses) loads into ours, gives
    bitsandbytes' dequantized values and saves back byte for byte; double-quantized absmax is refused."""
    import bitsandbytes as bnb

    if fmt == "int8" and quant_storage != torch.uint8:
        pytest.skip("quant_storage is a 4-bit option")
    torch.manual_seed(0)
    if fmt == "int8":
        theirs = bnb.nn.Linear8bitLt(64, 13, bias=False, has_fp16_weights=False).to("cpu")
        ours = triton_embed.Embedding8bit(13, 64)
        expected = theirs.weight.data.float() * (theirs.weight.SCB / 127.0)[:, None]  # as bnb's Embedding8bit
    else:
        theirs = bnb.nn.Linear4bit(64, 13, bias=False, quant_type=fmt, compress_statistics=False,
                                   quant_storage=quant_storage, compute_dtype=torch.float32).to("cpu")
        ours = triton_embed.Embedding4bit(13, 64, quant_type="fp4" if fmt == "nf4" else "nf4")
        expected = bnb.functional.dequantize_4bit(theirs.weight.data, theirs.weight.quant_state)
    state = theirs.state_dict()
    ours.load_state_dict(state)
    assert torch.equal(ours.dequantize(), expected.float())
    saved = ours.state_dict()
    assert sorted(saved) == sorted(state)
    assert all(saved[k].dtype == state[k].dtype and torch.equal(_bytes(saved[k]), _bytes(state[k])) for k in state)
    if fmt != "int8":
        nested = bnb.nn.Linear4bit(64, 13, bias=False, quant_type=fmt, compute_dtype=torch.float32).to("cpu")
        _failed_load(ours, nested.state_dict(), "weight.nested_absmax")
