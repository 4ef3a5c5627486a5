"""Quantized tables: drop-ins for bitsandbytes' ``Embedding8bit``, ``Embedding4bit`` (``EmbeddingNF4``,
``EmbeddingFP4``), and quantized StableEmbeddings, on fused gather + dequantize kernels.

Same constructors and storage as bitsandbytes (codes and scales bit for bit, ``triton_embed.quantize``),
plus: a keyword-only ``padding_idx`` (the row is zeroed at init, as ``torch.nn.Embedding`` does; the table
is frozen, so there is no gradient to mask), ``state_dict()`` / ``load_state_dict()`` in bitsandbytes' own
checkpoint layouts, lookups that read only the selected rows for any D, and conversions both ways
(``from_float``, ``to_bitsandbytes``).

The table is quantized by ``quantize()``, or, as bitsandbytes does, when the module moves to a CUDA
device. Float casts (``.half()``, ``.to(torch.bfloat16)``) change the output dtype; the codes and float32
scales never change. A forward before quantization raises ``RuntimeError``.

state_dict layouts (every entry a tensor, safetensors-compatible):

- int8, as bitsandbytes' ``Linear8bitLt``: ``weight`` (V, D) int8, ``SCB`` (V,) float32, ``weight_format``
  (uint8 0: row-major).
- 4-bit, as bitsandbytes' ``Linear4bit`` (``QuantState.as_dict(packed=True)``): ``weight`` (⌈V·D/2⌉, 1) in
  ``quant_storage``, ``weight.absmax``, ``weight.quant_map``, ``weight.quant_state.bitsandbytes__<nf4|fp4>``
  (uint8 JSON of quant_type, blocksize, dtype, shape).

A float table (``torch.nn.Embedding``'s state_dict) loads too, and is quantized at once if the module was.

>>> import torch, triton_embed
>>> emb = triton_embed.Embedding4bit(100, 16, quant_type="nf4").quantize()
>>> emb(torch.tensor([[3, 1, 4]])).shape, emb.weight.dtype, sorted(emb.state_dict())
(torch.Size([1, 3, 16]), torch.uint8,
     ['weight', 'weight.absmax', 'weight.quant_map', 'weight.quant_state.bitsandbytes__nf4'])
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import quantize as formats
from ._quantized_module import _QuantizedEmbedding


class Embedding8bit(_QuantizedEmbedding):
    """int8 rows, one float32 absmax per row; drop-in for ``bitsandbytes.nn.Embedding8bit``.

    Args:
        num_embeddings, embedding_dim: the table's shape.
        device, dtype: where the float table is created and the output dtype (float32, bfloat16, float16).
        padding_idx: a row zeroed at init (negative counts from the end).
        _weight: an initial float table (no init is run then).

    >>> import torch, triton_embed
    >>> emb = triton_embed.Embedding8bit(10, 4, padding_idx=0).quantize()
    >>> emb(torch.tensor([0, 3])).shape, emb.weight.dtype, emb.SCB.shape, sorted(emb.state_dict())
    (torch.Size([2, 4]), torch.int8, torch.Size([10]), ['SCB', 'weight', 'weight_format'])
    """

    _SCALES = ("SCB",)
    _KEYS = ("weight", "SCB", "weight_format")

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype: torch.dtype | None = None, *,
                 padding_idx: int | None = None, _weight: Tensor | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, device, dtype, padding_idx, _weight)
        self.register_buffer("SCB", None)

    @property
    def is_quantized(self) -> bool:
        return self.weight.dtype == torch.int8 and self.SCB is not None

    def _set_quantized(self, codes: Tensor, scales: Tensor) -> None:
        self.weight = torch.nn.Parameter(codes, requires_grad=False)
        self.SCB = scales

    def _set_from_float(self, table: Tensor) -> None:
        self._set_quantized(*formats.quantize_int8(table))

    def _state(self) -> tuple[Tensor, Tensor, None, int]:
        return self.weight, self.SCB, None, 0

    def dequantize(self) -> Tensor:
        if not self.is_quantized:
            return self.weight.detach().clone()
        return formats.dequantize_int8(self.weight, self.SCB, self.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.is_quantized:
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

    def _load_table(self, state_dict: dict, prefix: str, error_msgs: list, device: torch.device) -> bool | None:
        weight = state_dict[prefix + "weight"]
        if weight.is_floating_point():
            return False
        scales = state_dict.get(prefix + "SCB")
        layout = state_dict.get(prefix + "weight_format", 0)
        layout = layout.item() if isinstance(layout, Tensor) else layout
        shape = (self.num_embeddings, self.embedding_dim)
        if weight.dtype != torch.int8 or tuple(weight.shape) != shape or scales is None or \
                tuple(scales.shape) != shape[:1] or layout not in (0, "row"):
            error_msgs.append(f"{prefix}: an int8 table needs weight {shape} int8, SCB ({shape[0]},) and the row-major "
                              f"weight_format 0; got weight {tuple(weight.shape)} {weight.dtype}, SCB "
                              f"{None if scales is None else tuple(scales.shape)}, weight_format {layout!r}")
            return None
        self._set_quantized(weight.detach().to(device, copy=True), scales.detach().to(device, torch.float32, copy=True))
        return True


class Embedding4bit(_QuantizedEmbedding):
    """4-bit blocks (NF4 or FP4, one float32 absmax per ``blocksize`` elements of the flattened table);
    drop-in for ``bitsandbytes.nn.Embedding4bit``. Any D: a row is read from its own bytes and blocks, also
    when blocks cross rows (bitsandbytes then dequantizes the whole table per call).

    Args:
        num_embeddings, embedding_dim, dtype, device: as :class:`Embedding8bit`.
        quant_type: ``"fp4"`` (bitsandbytes' default) or ``"nf4"``.
        quant_storage: the dtype the packed bytes are saved and exported as (bitsandbytes' option).
        blocksize: elements per absmax (32 ... 4096, default 64).
        padding_idx, _weight: as :class:`Embedding8bit`.

    >>> import torch, triton_embed
    >>> emb = triton_embed.Embedding4bit(10, 5, quant_type="nf4").quantize()
    >>> emb(torch.tensor([1, 2])).shape, emb.weight.shape, emb.absmax.shape
    (torch.Size([2, 5]), torch.Size([25, 1]), torch.Size([1]))
    """

    _SCALES = ("absmax", "quant_map")
    #: The quant type a shorthand class stands for (None: any, taken from a checkpoint).
    _FIXED_QUANT_TYPE: str | None = None

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype | None = None,
                 quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8, device=None, *,
                 blocksize: int = 64, padding_idx: int | None = None, _weight: Tensor | None = None) -> None:
        formats.check_quant_type(quant_type)
        formats.check_blocksize(blocksize)
        super().__init__(num_embeddings, embedding_dim, device, dtype, padding_idx, _weight)
        self.quant_type, self.blocksize, self.quant_storage = quant_type, blocksize, quant_storage
        self.register_buffer("absmax", None, persistent=False)
        self.register_buffer("quant_map", None, persistent=False)

    @property
    def is_quantized(self) -> bool:
        return self.absmax is not None and self.weight.dtype == torch.uint8

    def _set_quantized(self, packed: Tensor, absmax: Tensor, quant_map: Tensor) -> None:
        size = torch.empty((), dtype=self.quant_storage).element_size()
        if packed.numel() % size:
            raise ValueError(f"{packed.numel()} packed bytes cannot be stored as {self.quant_storage}")
        self.weight = torch.nn.Parameter(packed.reshape(-1, 1), requires_grad=False)
        self.absmax, self.quant_map = absmax, quant_map

    def _set_from_float(self, table: Tensor) -> None:
        packed, absmax = formats.quantize_4bit(table, self.quant_type, self.blocksize)
        self._set_quantized(packed, absmax, formats.codebook(self.quant_type, table.device))

    def _state(self) -> tuple[Tensor, Tensor, Tensor, int]:
        return self.weight, self.absmax, self.quant_map, self.blocksize

    def dequantize(self) -> Tensor:
        if not self.is_quantized:
            return self.weight.detach().clone()
        return formats.dequantize_4bit(self.weight, self.absmax, self.quant_map,
                                       (self.num_embeddings, self.embedding_dim), self.blocksize, self.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, quant_type={self.quant_type!r}, blocksize={self.blocksize}"

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.is_quantized:
            return
        if self.quant_storage != torch.uint8:
            destination[prefix + "weight"] = self.weight.detach().view(-1).view(self.quant_storage).unsqueeze(1)
        extra = {"absmax": self.absmax, "quant_map": self.quant_map}
        for name, tensor in extra.items():
            destination[f"{prefix}weight.{name}"] = tensor if keep_vars else tensor.detach()
        destination[f"{prefix}weight.quant_state.bitsandbytes__{self.quant_type}"] = formats.pack_quant_state(
            self.quant_type, self.blocksize, self.dtype, (self.num_embeddings, self.embedding_dim))

    def _load_table(self, state_dict: dict, prefix: str, error_msgs: list, device: torch.device) -> bool | None:
        weight = state_dict[prefix + "weight"]
        packed_keys = [k for k in state_dict if k.startswith(prefix + "weight.quant_state.bitsandbytes__")]
        if weight.is_floating_point() and not packed_keys:
            return False
        absmax, quant_map = state_dict.get(prefix + "weight.absmax"), state_dict.get(prefix + "weight.quant_map")
        nested = prefix + "weight.nested_absmax" in state_dict
        if len(packed_keys) != 1 or absmax is None or quant_map is None or nested:
            error_msgs.append(f"{prefix}: a 4-bit table needs weight, weight.absmax, weight.quant_map and one "
                              "weight.quant_state.bitsandbytes__* entry (double-quantized absmax is not supported)")
            return None
        record = formats.unpack_quant_state(state_dict[packed_keys[0]])
        shape = (self.num_embeddings, self.embedding_dim)
        count = shape[0] * shape[1]
        packed = weight.detach().contiguous().reshape(-1).view(torch.uint8)
        blocksize = record["blocksize"]
        if record["shape"] != shape or record["quant_type"] not in formats.QUANT_TYPES or \
                blocksize not in formats.BLOCKSIZES or packed.numel() != (count + 1) // 2 or \
                tuple(absmax.shape) != (-(-count // blocksize),) or tuple(quant_map.shape) != (16,):
            error_msgs.append(f"{prefix}: the 4-bit state ({record}, {packed.numel()} bytes, absmax "
                              f"{tuple(absmax.shape)}) does not fit a {shape} table")
            return None
        if self._FIXED_QUANT_TYPE not in (None, record["quant_type"]):
            error_msgs.append(f"{prefix}: the checkpoint holds {record['quant_type']} codes; a {type(self).__name__} "
                              f"holds {self._FIXED_QUANT_TYPE} (load it into Embedding4bit(..., "
                              f"quant_type={record['quant_type']!r}))")
            return None
        # The codes mean something only in their own format, which the module takes from the checkpoint; the
        # output dtype stays the module's, as Embedding8bit's does (bitsandbytes casts to the module's dtype).
        self.quant_type, self.blocksize = record["quant_type"], blocksize
        self.quant_storage = weight.dtype
        self._set_quantized(packed.to(device, copy=True), absmax.detach().to(device, torch.float32, copy=True),
                            quant_map.detach().to(device, torch.float32, copy=True))
        return True


class EmbeddingNF4(Embedding4bit):
    """:class:`Embedding4bit` with ``quant_type="nf4"``; drop-in for ``bitsandbytes.nn.EmbeddingNF4``.

    >>> import triton_embed
    >>> triton_embed.EmbeddingNF4(8, 4).quant_type
    'nf4'
    """

    _FIXED_QUANT_TYPE = "nf4"

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype | None = None,
                 quant_storage: torch.dtype = torch.uint8, device=None, **options) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype, "nf4", quant_storage, device, **options)


class EmbeddingFP4(Embedding4bit):
    """:class:`Embedding4bit` with ``quant_type="fp4"``; drop-in for ``bitsandbytes.nn.EmbeddingFP4``.

    >>> import triton_embed
    >>> triton_embed.EmbeddingFP4(8, 4).quant_type
    'fp4'
    """

    _FIXED_QUANT_TYPE = "fp4"

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype | None = None,
                 quant_storage: torch.dtype = torch.uint8, device=None, **options) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype, "fp4", quant_storage, device, **options)


class StableEmbedding8bit(Embedding8bit):
    """An int8 table followed by bitsandbytes' StableEmbedding recipe, in one kernel: gather, dequantize,
    cast to ``torch.get_default_dtype()``, LayerNorm, cast to the module's dtype. ``norm`` is a
    ``torch.nn.LayerNorm(embedding_dim)`` with float32 parameters, trainable; the table is frozen (the
    backward re-dequantizes the rows for dγ/dβ; no N x D activation is kept).

    Args: as :class:`Embedding8bit`.

    >>> import torch, triton_embed
    >>> emb = triton_embed.StableEmbedding8bit(10, 4).quantize()
    >>> emb(torch.tensor([1, 2])).sum().backward()
    >>> emb.norm.weight.grad.shape, emb.weight.requires_grad, sorted(emb.state_dict())
    (torch.Size([4]), False, ['SCB', 'norm.bias', 'norm.weight', 'weight', 'weight_format'])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype: torch.dtype | None = None, *,
                 padding_idx: int | None = None, _weight: Tensor | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, device, dtype, padding_idx=padding_idx, _weight=_weight)
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)

    forward = _QuantizedEmbedding._stable_forward


class StableEmbedding4bit(Embedding4bit):
    """A 4-bit table followed by bitsandbytes' StableEmbedding recipe in one kernel (see
    :class:`StableEmbedding8bit`).

    Args: as :class:`Embedding4bit`.

    >>> import torch, triton_embed
    >>> emb = triton_embed.StableEmbedding4bit(10, 6, quant_type="nf4").quantize()
    >>> out = emb(torch.tensor([[1, 2, 3]]))
    >>> out.shape, bool(out.mean(-1).abs().max() < 1e-5)
    (torch.Size([1, 3, 6]), True)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype | None = None,
                 quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8, device=None, *,
                 blocksize: int = 64, padding_idx: int | None = None, _weight: Tensor | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype, quant_type, quant_storage, device, blocksize=blocksize,
                         padding_idx=padding_idx, _weight=_weight)
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)

    forward = _QuantizedEmbedding._stable_forward


__all__ = ["Embedding8bit", "Embedding4bit", "EmbeddingNF4", "EmbeddingFP4", "StableEmbedding8bit",
           "StableEmbedding4bit"]
