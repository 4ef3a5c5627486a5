"""Quantized tables: drop-ins for bitsandbytes' ``Embedding8bit``, ``Embedding4bit`` (``EmbeddingNF4``,
``EmbeddingFP4``), and quantized StableEmbeddings, on fused gather + dequantize kernels.

Same constructors and storage as bitsandbytes (codes and scales bit for bit, ``triton_embed.quantized.formats``),
plus: a keyword-only ``padding_idx`` (the row is zeroed at init, as ``torch.nn.Embedding`` does; the table
is frozen, so there is no gradient to mask), ``state_dict()`` / ``load_state_dict()`` in bitsandbytes' own
checkpoint layouts, lookups that read only the selected rows for any D, and conversions both ways
(``from_float``, ``to_bitsandbytes``).

The table is quantized by ``quantize()``, as bitsandbytes does when the module moves to a CUDA device, or by
the first forward. Float casts (``.half()``, ``.to(torch.bfloat16)``) change the output dtype; the codes and
float32 scales never change; other casts (``.double()``) raise ``TypeError``. A load is all or nothing: a
checkpoint entry the module cannot take raises ``load_state_dict``'s error, naming the key, and changes
nothing.

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

from . import formats
from .base import CheckpointError, _QuantizedEmbedding


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

    def _quantize_table(self, table: Tensor) -> tuple[Tensor, Tensor]:
        return formats.quantize_int8(table)

    def _state(self) -> tuple[Tensor, Tensor, None, int]:
        return self.weight, self.SCB, None, 0

    def _state_keys(self) -> tuple[str, ...]:
        return self._KEYS if self.is_quantized else ("weight",)

    def dequantize(self) -> Tensor:
        if not self.is_quantized:
            return self.weight.detach().clone()
        return formats.dequantize_int8(self.weight, self.SCB, self.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.is_quantized:
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)
            # A module under several names (T5's shared / encoder / decoder embeddings): the names after the
            # first get a copy of SCB, as they get a fresh weight_format. Hugging Face's save_pretrained drops the
            # other names' weights as tied, but refuses a shared buffer it does not know as tied.
            if not keep_vars and _saved_elsewhere(destination, prefix + "SCB"):
                destination[prefix + "SCB"] = self.SCB.detach().clone()

    def _load_table(self, state_dict: dict, prefix: str, device: torch.device):
        weight = state_dict[prefix + "weight"]
        if weight.is_floating_point():
            return None
        shape = (self.num_embeddings, self.embedding_dim)
        if weight.dtype != torch.int8 or tuple(weight.shape) != shape:
            raise CheckpointError(f"{prefix}weight: an int8 table is {shape} int8 codes (or a float table); got "
                                  f"{tuple(weight.shape)} {weight.dtype}")
        scales = state_dict.get(prefix + "SCB")
        if scales is None:
            raise CheckpointError(f"{prefix}SCB: missing, and {prefix}weight holds int8 codes, which need their row "
                                  "absmax")
        if not scales.is_floating_point() or tuple(scales.shape) != shape[:1]:
            raise CheckpointError(f"{prefix}SCB: the row absmax of a {shape} int8 table is ({shape[0]},) float; "
                                  f"got {tuple(scales.shape)} {scales.dtype}")
        layout = state_dict.get(prefix + "weight_format", 0)
        if isinstance(layout, Tensor):
            layout = layout.item() if layout.numel() == 1 and not layout.is_meta else f"a {tuple(layout.shape)} tensor"
        if layout not in (0, "row"):
            raise CheckpointError(f"{prefix}weight_format: only the row-major layout (0) is supported, got {layout!r}")
        state = weight.detach().to(device, copy=True), scales.detach().to(device, torch.float32, copy=True)
        return lambda: self._set_from_state(state)


def _saved_elsewhere(destination: dict, key: str) -> bool:
    """Whether the scales saved under ``key`` share their memory with scales saved under another name."""
    tensor = destination[key]
    return any(name != key and name.endswith("SCB") and isinstance(other, Tensor) and other.device == tensor.device
               and other.data_ptr() == tensor.data_ptr() for name, other in destination.items())


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

    _FOUR_BIT = True

    _SCALES = ("absmax", "quant_map")
    _KEYS = ("weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
             *(f"weight.quant_state.bitsandbytes__{t}" for t in formats.QUANT_TYPES))
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
        self._check_storage(packed)
        self.weight = torch.nn.Parameter(packed.reshape(-1, 1), requires_grad=False)
        self.absmax, self.quant_map = absmax, quant_map

    def _quantize_table(self, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        packed, absmax = formats.quantize_4bit(table, self.quant_type, self.blocksize)
        self._check_storage(packed)
        return packed, absmax, formats.codebook(self.quant_type, table.device)

    def _check_storage(self, packed: Tensor, storage: torch.dtype | None = None) -> None:
        storage = storage or self.quant_storage
        if packed.numel() % torch.empty((), dtype=storage).element_size():
            raise ValueError(f"{packed.numel()} packed bytes cannot be stored as {storage}")

    def _state_keys(self) -> tuple[str, ...]:
        if not self.is_quantized:
            return ("weight",)
        return ("weight", "weight.absmax", "weight.quant_map", f"weight.quant_state.bitsandbytes__{self.quant_type}")

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

    def _load_table(self, state_dict: dict, prefix: str, device: torch.device):
        weight = state_dict[prefix + "weight"]
        packed_keys = [k for k in state_dict if k.startswith(prefix + "weight.quant_state.bitsandbytes__")]
        if weight.is_floating_point() and not packed_keys:
            return None
        absmax, quant_map = state_dict.get(prefix + "weight.absmax"), state_dict.get(prefix + "weight.quant_map")
        if prefix + "weight.nested_absmax" in state_dict:
            raise CheckpointError(f"{prefix}weight.nested_absmax: double-quantized absmax is not supported")
        for name, tensor in (("absmax", absmax), ("quant_map", quant_map)):
            if tensor is None:
                raise CheckpointError(f"{prefix}weight.{name}: missing, and {prefix}weight holds 4-bit codes")
        if len(packed_keys) != 1:
            raise CheckpointError(f"{prefix}weight.quant_state.bitsandbytes__<nf4|fp4>: a 4-bit table has one such "
                                  f"record, got {packed_keys or 'none'}")
        key = packed_keys[0]
        try:
            record = formats.unpack_quant_state(state_dict[key])
        except ValueError as exc:
            raise CheckpointError(f"{key}: {exc}") from None
        if key.rsplit("__", 1)[1] != record["quant_type"]:
            raise CheckpointError(f"{key}: the record says quant_type {record['quant_type']!r}, its key another")
        shape = (self.num_embeddings, self.embedding_dim)
        count = shape[0] * shape[1]
        blocksize = record["blocksize"]
        if record["shape"] != shape or blocksize not in formats.BLOCKSIZES:
            raise CheckpointError(f"{key}: the record ({record}) is not a {shape} table's, in one of the block sizes "
                                  f"{formats.BLOCKSIZES}")
        packed = weight.detach().contiguous().reshape(-1).view(torch.uint8)
        if packed.numel() != (count + 1) // 2:
            raise CheckpointError(f"{prefix}weight: a {shape} table is {(count + 1) // 2} packed bytes, got "
                                  f"{packed.numel()}")
        for name, tensor, size in (("absmax", absmax, -(-count // blocksize)), ("quant_map", quant_map, 16)):
            if tuple(tensor.shape) != (size,) or not tensor.is_floating_point():
                raise CheckpointError(f"{prefix}weight.{name}: a {shape} table in blocks of {blocksize} has ({size},) "
                                      f"float {name}, got {tuple(tensor.shape)} {tensor.dtype}")
        if self._FIXED_QUANT_TYPE not in (None, record["quant_type"]):
            raise CheckpointError(f"{key}: the checkpoint holds {record['quant_type']} codes; a "
                                  f"{type(self).__name__} holds {self._FIXED_QUANT_TYPE} (load it into "
                                  f"Embedding4bit(..., quant_type={record['quant_type']!r}))")
        self._check_storage(packed, weight.dtype)
        state = (packed.to(device, copy=True), absmax.detach().to(device, torch.float32, copy=True),
                 quant_map.detach().to(device, torch.float32, copy=True))

        def commit() -> None:
            # The codes mean something only in their own format, which the module takes from the checkpoint; the
            # output dtype stays the module's, as Embedding8bit's does (bitsandbytes casts to the module's dtype).
            self.quant_type, self.blocksize, self.quant_storage = record["quant_type"], blocksize, weight.dtype
            self._set_from_state(state)

        return commit


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
