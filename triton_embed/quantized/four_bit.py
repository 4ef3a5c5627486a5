"""4-bit tables: ``Embedding4bit`` (NF4 or FP4 codes in blocks, one float32 absmax per block, saved as bitsandbytes'
``Linear4bit`` saves them), its shorthands ``EmbeddingNF4`` / ``EmbeddingFP4``, and ``StableEmbedding4bit``."""
from __future__ import annotations

import torch
from torch import Tensor

from . import formats
from .base import CheckpointError, _QuantizedEmbedding


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


__all__ = ["Embedding4bit", "EmbeddingNF4", "EmbeddingFP4", "StableEmbedding4bit"]
