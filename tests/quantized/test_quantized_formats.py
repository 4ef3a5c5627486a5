"""The quantized formats (``triton_embed.quantized.formats``): error bounds, zero rows, packing, bytes; and, where
bitsandbytes is installed, codes, scales and dequantized values bit for bit equal to bitsandbytes' own."""
from __future__ import annotations

import pytest
import torch
from _support.peers import needs
from _support.quantized import FORMATS
from hypothesis import given
from hypothesis import strategies as st

import triton_embed
from triton_embed.quantized import formats as quantize

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DIMS = [1, 5, 63, 64, 65, 130]


def _table(rows: int, dim: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Rows of very different scales, an all-zero row, and values exactly half-way between int8 steps."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, dim, generator=gen) * torch.rand(rows, 1, generator=gen).mul(4).exp()
    if rows > 2:
        table[1] = 0
    if rows > 3 and dim > 2:
        table[3, 1] = table[3].abs().max() * (63.5 / 127)
    return table.to(dtype)


def _largest_gap(quant_type: str) -> float:
    values = quantize.codebook(quant_type).sort().values
    return float((values[1:] - values[:-1]).max())


@given(rows=st.integers(1, 24), dim=st.sampled_from(DIMS), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999))
def test_int8_error_is_within_half_a_step(rows, dim, dtype, seed):
    table = _table(rows, dim, dtype, seed)
    codes, scales = quantize.quantize_int8(table)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32 and scales.shape == (rows,)
    error = (quantize.dequantize_int8(codes, scales, torch.float32) - table.float()).abs()
    # Half a step of the row's scale, plus the float16 cast the format makes first.
    bound = scales / 254 * (1 + 1e-3) + table.float().abs().amax(1) * 2.0 ** -11
    assert (error <= bound.unsqueeze(1)).all()


@given(rows=st.integers(1, 24), dim=st.sampled_from(DIMS), dtype=st.sampled_from(DTYPES),
       quant_type=st.sampled_from(["nf4", "fp4"]), blocksize=st.sampled_from([32, 64, 128]), seed=st.integers(0, 999))
def test_4bit_error_is_within_the_codebook_gap(rows, dim, dtype, quant_type, blocksize, seed):
    table = _table(rows, dim, dtype, seed)
    packed, absmax = quantize.quantize_4bit(table, quant_type, blocksize)
    count = rows * dim
    assert packed.shape == ((count + 1) // 2, 1) and packed.dtype == torch.uint8
    assert absmax.shape == (-(-count // blocksize),) and absmax.dtype == torch.float32
    values = quantize.dequantize_4bit(packed, absmax, quantize.codebook(quant_type), table.shape, blocksize,
                                      torch.float32)
    block_max = absmax[torch.arange(count) // blocksize].view(rows, dim)
    assert ((values - table.float()).abs() <= _largest_gap(quant_type) / 2 * block_max * (1 + 1e-6)).all()


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_codebook_values_code_to_themselves(quant_type):
    """A block holding absmax x each code value: every value comes back exactly, codes as listed (FP4's
    two zeros both decode to 0)."""
    book = quantize.codebook(quant_type)
    table = (book * 3.0).view(1, 16)
    packed, absmax = quantize.quantize_4bit(table, quant_type, 32)
    assert absmax.tolist() == [3.0]
    nibbles = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], 1).view(-1)
    expected = torch.arange(16)
    if quant_type == "fp4":
        expected[8] = 0  # -0 is 0: the first zero code
    assert nibbles.tolist() == expected.tolist()
    assert torch.equal(quantize.dequantize_4bit(packed, absmax, book, (1, 16), 32, torch.float32), table)


def test_zero_rows_and_blocks_dequantize_to_zero():
    table = torch.zeros(3, 70)
    table[2, 5] = 1.0
    codes, scales = quantize.quantize_int8(table)
    assert scales[:2].tolist() == [0.0, 0.0] and not codes[:2].any()
    for quant_type in ("nf4", "fp4"):
        packed, absmax = quantize.quantize_4bit(table, quant_type, 64)
        assert absmax[0] == 0 and absmax[-1] > 0  # the partial last block keeps max(absmax, 1e-38)
        values = quantize.dequantize_4bit(packed, absmax, quantize.codebook(quant_type), (3, 70), 64, torch.float32)
        assert torch.equal(values, table)


def test_packing_order_and_odd_counts():
    """The first element of a byte is its high nibble; an odd count pads with the code of 0."""
    packed, _ = quantize.quantize_4bit(torch.tensor([[1.0, -1.0, 1.0]]), "nf4", 64)
    assert packed.view(-1).tolist() == [0xF0, 0xF7]
    packed, _ = quantize.quantize_4bit(torch.tensor([[1.0, -1.0, 1.0]]), "fp4", 64)
    assert packed.view(-1).tolist() == [0x3B, 0x30]


def test_non_finite_tables_are_refused():
    with pytest.raises(ValueError, match="float16"):
        quantize.quantize_int8(torch.tensor([[1e5, 0.0]]))
    with pytest.raises(ValueError, match="finite"):
        quantize.quantize_4bit(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="blocksize"):
        quantize.quantize_4bit(torch.ones(2, 2), "nf4", 48)
    with pytest.raises(TypeError):
        quantize.quantize_4bit(torch.ones(2, 2, dtype=torch.float64))


def test_quant_state_record_round_trips():
    data = quantize.pack_quant_state("fp4", 128, torch.float16, (7, 65))
    assert data.dtype == torch.uint8
    assert quantize.unpack_quant_state(data) == {"quant_type": "fp4", "blocksize": 128, "dtype": torch.float16,
                                                 "shape": (7, 65)}


@pytest.mark.parametrize("rows, dim", [(7, 5), (33, 64), (10, 130), (128, 768)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_table_bytes(rows, dim, fmt):
    """The quantized table costs what the format says: V·D + 4·V (int8), ⌈V·D/2⌉ + 4·⌈V·D/64⌉ (4-bit)."""
    if fmt == "int8":
        emb = triton_embed.Embedding8bit(rows, dim).quantize()
        stored = emb.weight.nbytes + emb.SCB.nbytes
        assert stored == rows * dim + 4 * rows == quantize.int8_bytes(rows, dim)
    else:
        emb = triton_embed.Embedding4bit(rows, dim, quant_type=fmt).quantize()
        stored = emb.weight.nbytes + emb.absmax.nbytes
        assert stored == -(-rows * dim // 2) + 4 * -(-rows * dim // 64) == quantize.four_bit_bytes(rows, dim)
        assert emb.quant_map.nbytes == 64


# ----------------------------------------------------------------------------------------------------------
# bitsandbytes: the same codes, scales and values


def _bnb():
    import bitsandbytes
    import bitsandbytes.functional

    return bitsandbytes


def _bnb_dequantize_4bit(bnb, packed, state):
    """bitsandbytes' dequantization by its PyTorch backend (the format's definition: its CPU C++ kernel
    reads the wrong absmax for the last blocks when D is a multiple of 32 but not of the block size)."""
    from bitsandbytes.backends.default import ops

    compute = getattr(ops._dequantize_4bit_compute, "__wrapped__", ops._dequantize_4bit_compute)
    code = bnb.functional.get_4bit_type(state.quant_type, device=packed.device)
    return compute(packed.view(-1), state.absmax, code, state.blocksize, state.shape, state.dtype)


@needs("bitsandbytes")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_int8_codes_scales_and_rows_equal_bitsandbytes(dtype, dim):
    bnb = _bnb()
    table = _table(9, dim, dtype, seed=dim)
    theirs = bnb.nn.Embedding8bit(9, dim, dtype=dtype)
    theirs.weight.data.copy_(table)
    theirs = theirs.to("cpu")  # bitsandbytes quantizes on moving to a device
    codes, scales = quantize.quantize_int8(table)
    assert torch.equal(codes, theirs.weight.data) and torch.equal(scales, theirs.weight.SCB)
    ids = torch.randint(0, 9, (4, 3))
    assert torch.equal(triton_embed.Embedding8bit.from_float(theirs)(ids), theirs(ids))


@needs("bitsandbytes")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("blocksize", [64, 32, 128])
def test_4bit_codes_scales_and_rows_equal_bitsandbytes(dtype, quant_type, dim, blocksize):
    bnb = _bnb()
    table = _table(9, dim, dtype, seed=dim + blocksize)
    packed_theirs, state = bnb.functional.quantize_4bit(table, blocksize=blocksize, quant_type=quant_type)
    packed, absmax = quantize.quantize_4bit(table, quant_type, blocksize)
    assert torch.equal(packed, packed_theirs) and torch.equal(absmax, state.absmax)
    assert torch.equal(quantize.codebook(quant_type), state.code)
    ours = quantize.dequantize_4bit(packed, absmax, quantize.codebook(quant_type), table.shape, blocksize, dtype)
    assert torch.equal(ours, _bnb_dequantize_4bit(bnb, packed_theirs, state).view(table.shape))


@needs("bitsandbytes")
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dim", [64, 65, 5])
def test_4bit_module_rows_equal_bitsandbytes_module(quant_type, dim):
    """bitsandbytes' Embedding4bit and ours on the same quantized table: the same rows (bitsandbytes
    dequantizes the whole table when D % 64 != 0; we read the rows)."""
    bnb = _bnb()
    theirs = bnb.nn.Embedding4bit(11, dim, dtype=torch.bfloat16, quant_type=quant_type)
    theirs.weight.data.copy_(_table(11, dim, torch.bfloat16))
    theirs = theirs.to("cpu")
    ours = triton_embed.Embedding4bit.from_float(theirs)
    ids = torch.randint(0, 11, (2, 5))
    assert torch.equal(ours(ids), theirs(ids))


@needs("bitsandbytes")
@pytest.mark.parametrize("fmt", FORMATS)
def test_bitsandbytes_to_ours_to_bitsandbytes_keeps_codes_and_scales(fmt):
    bnb = _bnb()
    table = _table(13, 65, torch.float16)
    if fmt == "int8":
        theirs = bnb.nn.Embedding8bit(13, 65, dtype=torch.float16)
    else:
        theirs = bnb.nn.Embedding4bit(13, 65, dtype=torch.float16, quant_type=fmt)
    theirs.weight.data.copy_(table)
    theirs = theirs.to("cpu")
    cls = triton_embed.Embedding8bit if fmt == "int8" else triton_embed.Embedding4bit
    ours = cls.from_float(theirs)
    back = ours.to_bitsandbytes()
    assert type(back).__module__.startswith("bitsandbytes")
    ids = torch.randint(0, 13, (6,))
    if fmt == "int8":
        assert torch.equal(back.weight.data, theirs.weight.data) and torch.equal(back.weight.SCB, theirs.weight.SCB)
    else:
        a, b = back.weight.quant_state, theirs.weight.quant_state
        assert torch.equal(back.weight.data, theirs.weight.data) and torch.equal(a.absmax, b.absmax)
        assert (a.quant_type, a.blocksize, a.dtype, a.shape) == (b.quant_type, b.blocksize, b.dtype, b.shape)
        assert torch.equal(a.code, b.code)
    assert torch.equal(back(ids), theirs(ids)) and torch.equal(ours(ids), theirs(ids))


@needs("bitsandbytes")
def test_4bit_state_dict_is_bitsandbytes_quant_state():
    """Our 4-bit state_dict entries are bitsandbytes' packed QuantState: its own from_dict reads them."""
    bnb = _bnb()
    ours = triton_embed.EmbeddingNF4(6, 33, dtype=torch.bfloat16, blocksize=128).quantize()
    entries = {k.removeprefix("weight."): v for k, v in ours.state_dict().items() if k != "weight"}
    state = bnb.functional.QuantState.from_dict(entries, device=torch.device("cpu"))
    assert (state.quant_type, state.blocksize, state.dtype, tuple(state.shape)) == ("nf4", 128, torch.bfloat16, (6, 33))
    assert torch.equal(state.absmax, ours.absmax) and torch.equal(state.code, ours.quant_map)
    assert torch.equal(state.as_dict(packed=True)["quant_state.bitsandbytes__nf4"],
                       ours.state_dict()["weight.quant_state.bitsandbytes__nf4"])


@needs("bitsandbytes")
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bitsandbytes_state_that_does_not_fit_the_table_is_refused(fmt):
    """from_float takes a bitsandbytes module's codes and scales as they are, so they must fit its (V, D):
    a state for another shape would make rows read other rows' codes."""
    bnb = _bnb()
    if fmt == "int8":
        theirs = bnb.nn.Embedding8bit(13, 65, dtype=torch.float16)
    else:
        theirs = bnb.nn.Embedding4bit(13, 65, dtype=torch.float16, quant_type=fmt)
    theirs.weight.data.copy_(_table(13, 65, torch.float16))
    theirs = theirs.to("cpu")
    if fmt == "int8":
        theirs.weight.SCB = theirs.weight.SCB[:-1]
    else:
        theirs.weight.quant_state.shape = torch.Size([12, 65])
    cls = triton_embed.Embedding8bit if fmt == "int8" else triton_embed.Embedding4bit
    with pytest.raises(ValueError, match="SCB" if fmt == "int8" else "quant_state.shape"):
        cls.from_float(theirs)
