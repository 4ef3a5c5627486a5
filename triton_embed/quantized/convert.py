"""Conversions of the quantized modules (``int8.py``, ``four_bit.py``): ``from_float`` (float embeddings, and
bitsandbytes' quantized modules, whose codes and scales are taken as they are) and ``to_bitsandbytes``.
bitsandbytes -> triton_embed -> bitsandbytes gives back identical codes and scales.

>>> import torch, triton_embed
>>> source = torch.nn.Embedding(10, 6, padding_idx=1)
>>> emb = triton_embed.EmbeddingNF4.from_float(source)
>>> emb.is_quantized, emb.padding_idx, emb.dtype
(True, 1, torch.float32)
"""
from __future__ import annotations

import sys

import torch

from . import formats


def _bitsandbytes_nn():
    """``bitsandbytes.nn`` if bitsandbytes is loaded (a module of it cannot exist otherwise), else None."""
    return sys.modules.get("bitsandbytes.nn")


def _instance_of(module: torch.nn.Module, name: str) -> bool:
    bnb = _bitsandbytes_nn()
    cls = getattr(bnb, name, None) if bnb is not None else None
    return cls is not None and isinstance(module, cls)


def _fixed_quant_type(cls) -> str | None:
    """The 4-bit format a class holds whatever it is asked (EmbeddingNF4, EmbeddingFP4), or None."""
    return cls._FIXED_QUANT_TYPE


def _blank(cls, source: torch.nn.Module, dtype: torch.dtype, device: torch.device, **options):
    """A ``cls`` with no table yet (built on the meta device: nothing V x D is allocated), its norm (for the
    StableEmbedding forms) the source's own module, whatever it is (a LayerNorm, an RMSNorm, ...), or for a plain
    source a fresh LayerNorm on ``device``, float32 whatever the default dtype."""
    new = cls(source.num_embeddings, source.embedding_dim, dtype=dtype, device="meta",
              padding_idx=source.padding_idx, **options)
    if hasattr(new, "norm"):
        if "norm" in source._modules:
            norm = source._modules["norm"]
            if norm is None:
                raise TypeError(f"the source {type(source).__name__} has no norm module (norm is None)")
            new.norm = norm
        else:
            new.norm = torch.nn.LayerNorm(source.embedding_dim, device=device, dtype=torch.float32)
    return new.train(source.training)


def _check_fits(shape: tuple[int, int], *checks) -> None:
    """(name, got, expected) triples of a bitsandbytes module's quantized state: a state that does not fit the
    module's (V, D) table would read other rows' codes, so it is refused."""
    for name, got, expected in zip(checks[0::3], checks[1::3], checks[2::3]):
        if got != expected:
            raise ValueError(f"the bitsandbytes module's {name} is {got}, a {shape} table's is {expected}")


def _four_bit_options(cls, quant_type: str, blocksize: int) -> dict:
    fixed = _fixed_quant_type(cls)
    if fixed is not None and fixed != quant_type:
        raise TypeError(f"{cls.__name__} holds {fixed} codes; the source holds {quant_type} ones")
    return {"blocksize": blocksize} if fixed is not None else {"quant_type": quant_type, "blocksize": blocksize}


def from_float(cls, module: torch.nn.Module, **options):
    """See ``_QuantizedEmbedding.from_float`` (``cls`` is one of its subclasses, which this module does not import:
    they call it)."""
    if getattr(type(module), "_QUANTIZED_TABLE", False):
        raise TypeError(f"{type(module).__name__} is quantized already; dequantize() it into a float module to "
                        "change its format")
    if not isinstance(module, torch.nn.Embedding):
        raise TypeError(f"from_float takes an embedding module, got {type(module).__name__}")
    four_bit = cls._FOUR_BIT
    weight = module.weight
    if _instance_of(module, "Embedding8bit") or _instance_of(module, "Embedding4bit"):
        bnb_four_bit = _instance_of(module, "Embedding4bit")
        if bnb_four_bit != four_bit:
            raise TypeError(f"{type(module).__name__} holds a {'4-bit' if bnb_four_bit else 'int8'} table: use "
                            f"triton_embed.{'Embedding4bit' if bnb_four_bit else 'Embedding8bit'}.from_float")
        dtype = getattr(module, "dtype", weight.dtype)
        shape = (module.num_embeddings, module.embedding_dim)
        if not bnb_four_bit and weight.dtype == torch.int8 and getattr(weight, "SCB", None) is not None:
            _check_fits(shape, "int8 codes", tuple(weight.shape), shape, "SCB", tuple(weight.SCB.shape), shape[:1])
            new = _blank(cls, module, dtype, weight.device)
            new._set_from_state((weight.data.clone(), weight.SCB.detach().float().clone()))
            return new
        state = getattr(weight, "quant_state", None) or getattr(module, "quant_state", None)
        if bnb_four_bit and getattr(weight, "bnb_quantized", False) and state is not None:
            if state.nested:
                raise ValueError("double-quantized (compress_statistics) absmax is not supported")
            count = shape[0] * shape[1]
            _check_fits(shape, "quant_state.shape", tuple(state.shape), shape, "packed bytes",
                        (weight.data.nbytes,), ((count + 1) // 2,), "absmax", tuple(state.absmax.shape),
                        (-(-count // state.blocksize),), "code", tuple(state.code.shape), (16,))
            new = _blank(cls, module, dtype, weight.device, **_four_bit_options(cls, state.quant_type, state.blocksize))
            new.quant_storage = weight.dtype
            new._set_from_state((weight.data.contiguous().view(-1).view(torch.uint8).clone(),
                                 state.absmax.detach().float().clone(), state.code.detach().float().clone()))
            return new
        if bnb_four_bit:  # not quantized yet: its own format options
            options = {"quant_type": weight.quant_type, "blocksize": weight.blocksize, **options}
        table = weight.detach().to(dtype)
    else:
        if module.max_norm is not None:
            raise ValueError("max_norm renormalises the table in place, which a quantized (frozen) table cannot do")
        table = weight.detach()
    if not table.is_floating_point():
        raise TypeError(f"from_float needs a float table, got {table.dtype}")
    if four_bit:
        options = _four_bit_options(cls, options.pop("quant_type", _fixed_quant_type(cls) or "fp4"),
                                    options.pop("blocksize", 64)) | options
    new = _blank(cls, module, table.dtype, table.device, **options)
    if table.is_meta:  # no values yet (a model built on the meta device): quantized once a float table is loaded
        return new
    with torch.no_grad():
        new._set_from_float(table)
    return new


def to_bitsandbytes(module) -> torch.nn.Module:
    """See ``_QuantizedEmbedding.to_bitsandbytes``."""
    try:
        import bitsandbytes.nn as bnb
    except ImportError as exc:
        raise ImportError("to_bitsandbytes needs bitsandbytes installed") from exc
    if hasattr(module, "norm"):
        raise TypeError("bitsandbytes has no quantized StableEmbedding: export the table alone from an "
                        "Embedding8bit / Embedding4bit")
    codes, scales, quant_map, blocksize = module._state_or_raise()
    rows, dim = module.num_embeddings, module.embedding_dim
    if codes.dtype == torch.int8:
        out = bnb.Embedding8bit(rows, dim, device="meta", dtype=module.dtype)
        data = codes.detach().clone()
        out.weight = bnb.Int8Params(data, requires_grad=False, has_fp16_weights=False, CB=data,
                                    SCB=scales.detach().clone())
        return out.train(module.training)
    kind = bnb.EmbeddingNF4 if module.quant_type == "nf4" else bnb.EmbeddingFP4
    out = kind(rows, dim, dtype=module.dtype, quant_storage=module.quant_storage, device="meta")
    stats = {"absmax": scales.detach().clone(), "quant_map": quant_map.detach().clone(),
             f"quant_state.bitsandbytes__{module.quant_type}": formats.pack_quant_state(
                 module.quant_type, blocksize, module.dtype, (rows, dim))}
    data = codes.detach().reshape(-1).view(module.quant_storage).unsqueeze(1).clone()
    out.weight = bnb.Params4bit.from_prequantized(data, stats, requires_grad=False, device=codes.device, module=out)
    return out.train(module.training)


__all__ = ["from_float", "to_bitsandbytes"]
