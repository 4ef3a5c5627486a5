"""bitsandbytes' quantized table formats in PyTorch alone: int8 rows and 4-bit blocks (NF4, FP4).

Quantizing runs once, so it is plain PyTorch (on the table's device); it gives bit for bit the codes and
scales of bitsandbytes 0.50 (``Int8Params`` / ``int8_vectorwise_quant``; ``quantize_4bit`` without
double quantization, as its embeddings use it), so quantized state converts both ways.

int8, one row at a time: the table is cast to float16 first (as bitsandbytes does), the row's absmax
``|x|`` is kept as float32 (``SCB``), codes are ``round(x * (127 / absmax))`` in float32, ties to even, and 0
for an all-zero row. Value: ``code * (absmax / 127)`` in float32, then the module's dtype.

4-bit, the table flattened row-major and cut into blocks of ``blocksize`` consecutive elements (a block
may span rows when D % blocksize != 0): one float32 absmax per block; each element scaled to
``x * (1 / max(absmax, 1e-38))`` (in a partial last block: ``x / max(absmax, 1e-38)``, and that block keeps
the clamped absmax), clipped to [-1, 1], and coded as the nearest codebook value, a tie going to the lower
value (the float32 midpoints of the sorted codebook; FP4's two zeros in index order). Two codes per byte,
the first element in the high nibble; an odd element count is padded with the code of 0. Value:
``codebook[code] * absmax`` in float32, then the module's dtype.

>>> import torch
>>> table = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -2.0]])
>>> codes, scales = quantize_int8(table)
>>> codes.tolist(), scales.tolist()
([[64, -127, 32], [127, 0, -127]], [1.0, 2.0])
>>> packed, absmax = quantize_4bit(table, "nf4", blocksize=64)
>>> dequantize_4bit(packed, absmax, codebook("nf4"), table.shape, 64, torch.float32).tolist()
[[0.4922246038913727, -1.0501461029052734, 0.3218604028224945], [2.0, 0.0, -2.0]]
"""
from __future__ import annotations

import json
import math

import torch
from torch import Tensor

#: NormalFloat4: quantiles of N(0, 1) scaled to [-1, 1], in code order (bitsandbytes' table).
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
#: FP4 (1 sign, 2 exponent, 1 mantissa bits, bias 2) in code order, before scaling by 1/12 to [-1, 1].
FP4 = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)
QUANT_TYPES = ("nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Table dtypes of the formats (bitsandbytes' 4-bit quantizer takes these three).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: The smallest absmax a 4-bit block is divided by (an all-zero block).
_TINY = 1e-38
#: Elements quantized per step (a multiple of every block size): bounds the temporaries of a big table.
_CHUNK = 1 << 22


def codebook(quant_type: str, device: torch.device | str | None = None) -> Tensor:
    """The 16 float32 values of a 4-bit code, in code order (bitsandbytes' ``quant_map``).

    >>> codebook("fp4")[:4].tolist()
    [0.0, 0.0052083334885537624, 0.6666666865348816, 1.0]
    """
    check_quant_type(quant_type)
    if quant_type == "nf4":
        return torch.tensor(NF4, dtype=torch.float32, device=device)
    return torch.tensor(FP4, dtype=torch.float32, device=device) / 12.0


def check_quant_type(quant_type: str) -> None:
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")


def check_blocksize(blocksize: int) -> None:
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")


def check_table_dtype(dtype: torch.dtype) -> None:
    if dtype not in DTYPES:
        raise TypeError(f"quantized tables hold float32, bfloat16 or float16 values, got {dtype}")


def _bounds(quant_type: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """(float32 midpoints between the sorted code values, code of each sorted position)."""
    values = codebook(quant_type, device)
    order = torch.sort(values, stable=True).indices
    ordered = values[order]
    return (ordered[:-1] + ordered[1:]) / 2, order.to(torch.uint8)


def quantize_int8(table: Tensor) -> tuple[Tensor, Tensor]:
    """(codes (V, D) int8, absmax (V,) float32) of a float table, on its device.

    >>> quantize_int8(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
    (tensor([[127, -64],
            [  0,   0]], dtype=torch.int8), tensor([1., 0.]))
    """
    if table.dim() != 2:
        raise ValueError(f"a table is 2-D (num_embeddings, embedding_dim), got shape {tuple(table.shape)}")
    check_table_dtype(table.dtype)
    rows, dim = table.shape
    codes = torch.empty((rows, dim), dtype=torch.int8, device=table.device)
    scales = torch.zeros((rows,), dtype=torch.float32, device=table.device)
    if not dim or table.is_meta:  # a meta table has no values: the layout alone
        return codes, scales
    step = max(1, _CHUNK // dim)
    for start in range(0, rows, step):
        half = table[start:start + step].to(torch.float16)
        if not bool(torch.isfinite(half).all()):
            raise ValueError("the int8 format casts the table to float16 first: its values must be finite and "
                             "within float16's range (|x| <= 65504)")
        absmax = half.abs().amax(dim=1).float()
        scaled = torch.round(half * (127.0 / absmax.unsqueeze(-1)))
        codes[start:start + step] = torch.where(absmax.unsqueeze(-1) > 0, scaled, 0.0).to(torch.int8)
        scales[start:start + step] = absmax
    return codes, scales


def dequantize_int8(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    """The whole (V, D) table in ``dtype``: ``codes * (absmax / 127)`` in float32, rounded once."""
    return (codes.float() * (scales / 127.0).unsqueeze(-1)).to(dtype)


def quantize_4bit(table: Tensor, quant_type: str = "fp4", blocksize: int = 64) -> tuple[Tensor, Tensor]:
    """(packed codes (⌈V·D/2⌉, 1) uint8, absmax (⌈V·D/blocksize⌉,) float32) of a float table, on its device.

    >>> packed, absmax = quantize_4bit(torch.tensor([[1.0, -1.0, 0.0]]), "nf4")
    >>> [f"{b:08b}" for b in packed.view(-1).tolist()], absmax.tolist()
    (['11110000', '01110111'], [1.0])
    """
    check_quant_type(quant_type)
    check_blocksize(blocksize)
    check_table_dtype(table.dtype)
    flat = table.reshape(-1)
    count = flat.numel()
    packed = torch.empty((count + 1) // 2, dtype=torch.uint8, device=table.device)
    absmax = torch.empty(-(-count // blocksize), dtype=torch.float32, device=table.device)
    bounds, order = _bounds(quant_type, table.device)
    for start in range(0, 0 if table.is_meta else count, _CHUNK):  # a meta table has no values: the layout alone
        x = flat[start:start + _CHUNK].float()
        if not bool(torch.isfinite(x).all()):
            raise ValueError("a 4-bit table's values must be finite")
        full = x.numel() // blocksize * blocksize
        blocks = x[:full].view(-1, blocksize)
        block_max = blocks.abs().amax(dim=1)
        scaled = [(blocks * (1.0 / block_max.clamp(min=_TINY)).unsqueeze(-1)).reshape(-1)]
        maxima = [block_max]
        if full < x.numel():  # the table's partial last block
            last = x[full:].abs().amax().clamp(min=_TINY)
            scaled.append(x[full:] / last)
            maxima.append(last.reshape(1))
        values = torch.cat(scaled).clamp_(-1.0, 1.0)
        if values.numel() % 2:
            values = torch.cat([values, values.new_zeros(1)])
        q = order[torch.searchsorted(bounds, values)]
        packed[start // 2:start // 2 + q.numel() // 2] = (q[0::2] << 4) | q[1::2]
        absmax[start // blocksize:start // blocksize + sum(m.numel() for m in maxima)] = torch.cat(maxima)
    return packed.unsqueeze(1), absmax


def dequantize_4bit(packed: Tensor, absmax: Tensor, quant_map: Tensor, shape: tuple[int, ...] | torch.Size,
                    blocksize: int, dtype: torch.dtype) -> Tensor:
    """The whole table of ``shape`` in ``dtype``: ``quant_map[code] * absmax[block]`` in float32, rounded once."""
    count = math.prod(shape)
    element = torch.arange(count, device=packed.device)
    byte = packed.reshape(-1).view(torch.uint8)[element >> 1]
    nibble = torch.where(element % 2 == 0, byte >> 4, byte & 15).long()
    return (quant_map[nibble] * absmax[element // blocksize]).to(dtype).view(tuple(shape))


def int8_bytes(rows: int, dim: int) -> int:
    """Bytes of an int8 table: V·D codes + 4·V scales.

    >>> int8_bytes(128256, 4096)
    525849600
    """
    return rows * dim + 4 * rows


def four_bit_bytes(rows: int, dim: int, blocksize: int = 64) -> int:
    """Bytes of a 4-bit table: ⌈V·D/2⌉ codes + 4·⌈V·D/blocksize⌉ scales (the 64-byte codebook aside).

    >>> four_bit_bytes(128256, 4096) / 2**20
    281.8125
    """
    count = rows * dim
    return -(-count // 2) + 4 * -(-count // blocksize)


def pack_quant_state(quant_type: str, blocksize: int, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """The non-tensor part of a 4-bit state as uint8 JSON bytes: bitsandbytes' ``quant_state.bitsandbytes__*``
    entry (the same bytes, so checkpoints are interchangeable and safetensors-compatible).

    >>> bytes(pack_quant_state("nf4", 64, torch.bfloat16, (3, 5)).tolist()).decode()
    '{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [3, 5]}'
    """
    record = {"quant_type": quant_type, "blocksize": int(blocksize), "dtype": str(dtype).removeprefix("torch."),
              "shape": [int(s) for s in shape]}
    return torch.tensor(list(json.dumps(record).encode("utf-8")), dtype=torch.uint8)


def unpack_quant_state(data: Tensor) -> dict:
    """The record :func:`pack_quant_state` wrote: quant_type, blocksize, dtype (a torch dtype), shape (a tuple,
    or None). Anything else (not uint8 bytes, not JSON, a field missing or of the wrong kind) raises ValueError.

    >>> unpack_quant_state(pack_quant_state("fp4", 128, torch.float16, (4, 8)))
    {'quant_type': 'fp4', 'blocksize': 128, 'dtype': torch.float16, 'shape': (4, 8)}
    >>> unpack_quant_state(pack_quant_state("fp4", 128, torch.float16, (4, 8))[:-3])
    Traceback (most recent call last):
    ...
    ValueError: a 4-bit quant state record is not valid UTF-8 JSON (Expecting value: line 1 column 74 (char 73))
    """
    if not isinstance(data, Tensor) or data.dtype != torch.uint8 or data.dim() != 1 or data.is_meta:
        what = f"{tuple(data.shape)} {data.dtype} on {data.device}" if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"a 4-bit quant state record is a 1-D uint8 tensor of JSON bytes, got {what}")
    try:
        record = json.loads(bytes(data.cpu().tolist()).decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        raise ValueError(f"a 4-bit quant state record is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a 4-bit quant state record is a JSON object, got {type(record).__name__}")
    quant_type, blocksize, shape = record.get("quant_type"), record.get("blocksize"), record.get("shape")
    dtype = getattr(torch, record["dtype"], None) if isinstance(record.get("dtype"), str) else None
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type {quant_type!r} in a 4-bit quant state record is not one of {QUANT_TYPES}")
    if type(blocksize) is not int:
        raise ValueError(f"blocksize {blocksize!r} in a 4-bit quant state record is not an integer")
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {record.get('dtype')!r} in a 4-bit quant state record")
    if shape is not None and not (isinstance(shape, list) and all(type(s) is int for s in shape)):
        raise ValueError(f"shape {shape!r} in a 4-bit quant state record is not a list of integers")
    return {"quant_type": quant_type, "blocksize": blocksize, "dtype": dtype,
            "shape": tuple(shape) if shape is not None else None}


__all__ = ["NF4", "FP4", "QUANT_TYPES", "BLOCKSIZES", "codebook", "quantize_int8", "dequantize_int8",
           "quantize_4bit", "dequantize_4bit", "int8_bytes", "four_bit_bytes", "pack_quant_state",
           "unpack_quant_state"]
