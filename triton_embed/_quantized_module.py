"""The machinery every quantized table module shares (``nn_quantized.py`` holds the formats): quantization
on request or on moving to CUDA, float32 scales that dtype casts never touch, the lookup ops, state_dict
loading of a float or a quantized table, and the conversions (``convert_quantized.py``)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import convert_quantized, quantize as formats
from ._dispatch import fusable_layer_norm
from ._validation import check_indices_dtype, check_same_device, normalize_padding_idx
from .ops import quantized as _ops  # noqa: F401  (registers triton_embed::quantized_*)


class _QuantizedEmbedding(torch.nn.Embedding):
    """What the quantized modules share: quantization on request or on moving to CUDA, float32 scales kept
    through dtype casts, the lookup ops. Subclasses name their scale buffers and hold the format."""

    _SCALES: tuple[str, ...] = ()

    def __init__(self, num_embeddings: int, embedding_dim: int, device, dtype: torch.dtype | None,
                 padding_idx: int | None, _weight: Tensor | None) -> None:
        normalize_padding_idx(padding_idx, num_embeddings)
        super().__init__(num_embeddings, embedding_dim, padding_idx, _weight=_weight, _freeze=True, device=device,
                         dtype=dtype)
        formats.check_table_dtype(self.weight.dtype)
        #: Output dtype (bitsandbytes' ``dtype``): the float table's dtype, the dequantized rows' dtype.
        self.dtype = self.weight.dtype

    @property
    def is_quantized(self) -> bool:
        raise NotImplementedError

    def _set_from_float(self, table: Tensor) -> None:
        raise NotImplementedError

    def _state(self) -> tuple[Tensor, Tensor, Tensor | None, int]:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        if getattr(self, "is_quantized", False):
            raise RuntimeError("the table is quantized: load or quantize a float table instead of re-initialising it")
        super().reset_parameters()

    def quantize(self):
        """Quantize the float table in place, where it is (no-op once quantized); returns the module."""
        if not self.is_quantized:
            with torch.no_grad():
                self._set_from_float(self.weight.detach())
        return self

    def dequantize(self) -> Tensor:
        """The whole table, dequantized, in the module's dtype (the format's definition, for inspection and
        export; the forward reads only the rows it needs)."""
        raise NotImplementedError

    def _apply(self, fn, recurse: bool = True):
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.weight.device))
        held = {name: self._buffers.pop(name) for name in self._SCALES if name in self._buffers}
        try:
            super()._apply(fn, recurse)
        finally:  # scales move but are never cast
            for name, tensor in held.items():
                self._buffers[name] = None if tensor is None else tensor.to(probe.device)
        if probe.dtype in formats.DTYPES:
            self.dtype = probe.dtype
        if not self.is_quantized and self.weight.device.type == "cuda":
            self.quantize()
        return self

    def _state_or_raise(self) -> tuple[Tensor, Tensor, Tensor | None, int]:
        """The quantized state; a table not quantized yet is quantized first, where it is (bitsandbytes
        quantizes on any move to a device: a forward after ``.to("cpu")`` works there too)."""
        if not self.is_quantized:
            if torch.compiler.is_compiling() or self.weight.is_meta:
                raise RuntimeError(f"{type(self).__name__}: the table is not quantized yet; call .quantize() (or "
                                   "move the module to a CUDA device) before compiling or tracing it")
            with torch.inference_mode(False):  # codes usable outside an inference_mode block too
                self.quantize()
        return self._state()

    def forward(self, input: Tensor) -> Tensor:
        codes, scales, quant_map, blocksize = self._state_or_raise()
        check_indices_dtype(input)
        check_same_device(input, codes)
        return torch.ops.triton_embed.quantized_embedding(
            codes, scales, quant_map, input, self.num_embeddings, self.embedding_dim, blocksize, self.dtype)

    def _stable_forward(self, input: Tensor) -> Tensor:
        norm = self.norm
        if not fusable_layer_norm(norm, self.embedding_dim):  # another norm, or hooks on it: bitsandbytes' graph
            rows = _QuantizedEmbedding.forward(self, input)
            return norm(rows.to(torch.get_default_dtype())).to(self.dtype)
        codes, scales, quant_map, blocksize = self._state_or_raise()
        check_indices_dtype(input)
        check_same_device(input, codes)
        out, _, _ = torch.ops.triton_embed.quantized_stable_embedding(
            codes, scales, quant_map, input, norm.weight, norm.bias, self.num_embeddings, self.embedding_dim,
            blocksize, float(norm.eps), torch.get_default_dtype(), self.dtype)
        return out

    def _load_table(self, state_dict: dict, prefix: str, error_msgs: list, device: torch.device) -> bool | None:
        """Load this format's quantized entries onto ``device`` (True), leave a float table to the caller
        (False), or report a problem (None)."""
        raise NotImplementedError

    _KEYS: tuple[str, ...] = ("weight",)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        for hook in self._load_state_dict_pre_hooks.values():  # as torch.nn.Module's own loader runs them
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            if strict:
                missing_keys.append(prefix + "weight")
        else:
            was_quantized = self.is_quantized
            # Loaded onto the module's device; a module on the meta device, or loading with assign=True, takes
            # the checkpoint's.
            assign = local_metadata.get("assign_to_params_buffers", False) or self.weight.is_meta
            device = weight.device if assign else self.weight.device
            if self._load_table(state_dict, prefix, error_msgs, device) is False:
                if weight.dim() != 2 or tuple(weight.shape) != (self.num_embeddings, self.embedding_dim):
                    error_msgs.append(f"size mismatch for {prefix}weight: copying a param with shape "
                                      f"{tuple(weight.shape)}, the shape in current model is "
                                      f"{(self.num_embeddings, self.embedding_dim)}")
                    return
                self._clear_state()
                table = weight.detach().to(device, self.dtype, copy=True)
                self.weight = torch.nn.Parameter(table, requires_grad=False)
                if was_quantized:
                    self.quantize()
        if strict:
            for key in state_dict:
                if key.startswith(prefix):
                    name = key[len(prefix):]
                    if name.split(".", 1)[0] not in self._modules and not any(
                            name == k or name.startswith(k + ".") for k in self._KEYS):
                        unexpected_keys.append(key)

    def _clear_state(self) -> None:
        for name in self._SCALES:
            setattr(self, name, None)

    @classmethod
    def from_float(cls, module: torch.nn.Module, **options):
        """A quantized module from a float embedding (``torch.nn.Embedding``, triton_embed's or bitsandbytes'
        ``Embedding`` / ``StableEmbedding``: quantized now, where its table is) or from bitsandbytes' quantized
        module of the same format (its codes and scales taken as they are). A StableEmbedding source keeps
        its very ``norm``. ``options``: ``quant_type``, ``blocksize`` for the 4-bit formats."""
        return convert_quantized.from_float(cls, module, **options)

    def to_bitsandbytes(self) -> torch.nn.Module:
        """bitsandbytes' module of this format holding these very codes and scales (needs bitsandbytes)."""
        return convert_quantized.to_bitsandbytes(self)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        return text + ("" if self.is_quantized else ", not quantized")
