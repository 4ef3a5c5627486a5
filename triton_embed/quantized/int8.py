"""int8 tables: ``Embedding8bit`` (bitsandbytes' layout: int8 rows and one float32 absmax per row, saved as its
``Linear8bitLt`` saves them) and ``StableEmbedding8bit``."""
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


__all__ = ["Embedding8bit", "StableEmbedding8bit"]
