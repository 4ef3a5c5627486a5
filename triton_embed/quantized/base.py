"""The machinery every quantized table module shares (``modules.py`` holds the formats): quantization
on request or on moving to CUDA, float32 scales and integer codes that dtype casts never touch, the lookup
ops, state_dict loading of a float or a quantized table (all or nothing: a load that fails leaves the module
as it was), and the conversions (``convert.py``)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..runtime.dispatch import fusable_layer_norm
from ..runtime.validation import check_indices_dtype, check_same_device, normalize_padding_idx
from . import convert
from . import formats
from . import ops as _ops  # noqa: F401  (registers triton_embed::quantized_*)

#: Device types a move to which quantizes a float table (as bitsandbytes does on a move to the GPU).
QUANTIZING_DEVICES = ("cuda",)


class CheckpointError(ValueError):
    """A state_dict entry a quantized table cannot load; its message names the key."""


def _casts(fn, tensor: Tensor) -> bool:
    """Whether ``_apply``'s ``fn`` changes the dtype of a tensor like ``tensor`` (a cast, not a move)."""
    return fn(torch.empty(0, dtype=tensor.dtype, device=tensor.device)).dtype != tensor.dtype


class _QuantizedEmbedding(torch.nn.Embedding):
    """What the quantized modules share: quantization on request or on moving to CUDA, float32 scales kept
    through dtype casts, the lookup ops. Subclasses name their scale buffers and hold the format."""

    _SCALES: tuple[str, ...] = ()
    #: What ``convert.from_float`` reads of a class (it imports none of them): a quantized table's class, and
    #: a 4-bit one (whose ``_FIXED_QUANT_TYPE`` it reads too).
    _QUANTIZED_TABLE = True
    _FOUR_BIT = False
    #: True while the float table has no values yet (built on the meta device, or moved off it by ``to_empty``):
    #: a float table loaded into the module is quantized at once, and moves never quantize the placeholder.
    _quantize_when_loaded: bool = False

    def __init__(self, num_embeddings: int, embedding_dim: int, device, dtype: torch.dtype | None,
                 padding_idx: int | None, _weight: Tensor | None) -> None:
        normalize_padding_idx(padding_idx, num_embeddings)
        super().__init__(num_embeddings, embedding_dim, padding_idx, _weight=_weight, _freeze=True, device=device,
                         dtype=dtype)
        formats.check_table_dtype(self.weight.dtype)
        #: Output dtype (bitsandbytes' ``dtype``): the float table's dtype, the dequantized rows' dtype.
        self.dtype = self.weight.dtype
        if self.weight.is_meta:  # no values yet: the float table loaded into it is quantized at once
            self._quantize_when_loaded = True

    @property
    def is_quantized(self) -> bool:
        raise NotImplementedError

    def _quantize_table(self, table: Tensor) -> tuple[Tensor, ...]:
        """This format's quantized tensors of a float table (what ``_set_quantized`` takes); the module is not
        touched. Raises ValueError for a table the format cannot hold (NaN, inf; int8: |x| > 65504)."""
        raise NotImplementedError

    def _set_quantized(self, *state: Tensor) -> None:
        raise NotImplementedError

    def _set_from_state(self, state: tuple[Tensor, ...]) -> None:
        self._set_quantized(*state)
        self._quantize_when_loaded = False

    def _set_from_float(self, table: Tensor) -> None:
        self._set_from_state(self._quantize_table(table))

    def _state_keys(self) -> tuple[str, ...]:
        """The state_dict keys (without prefix) this module saves now."""
        return ("weight",)

    def _state(self) -> tuple[Tensor, Tensor, Tensor | None, int]:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        if getattr(self, "is_quantized", False):
            raise RuntimeError("the table is quantized: load or quantize a float table instead of re-initialising it")
        super().reset_parameters()

    def requires_grad_(self, requires_grad: bool = True):
        """As ``torch.nn.Module.requires_grad_``, but the table is frozen, quantized yet or not: asking it for
        gradients raises ``RuntimeError`` (it would be dropped, or refused by the integer codes, depending on
        whether the table was quantized yet); a StableEmbedding's ``norm`` takes ``norm.requires_grad_()``.

        >>> import triton_embed
        >>> emb = triton_embed.StableEmbedding8bit(4, 3)
        >>> emb.requires_grad_(False).norm.weight.requires_grad, emb.norm.requires_grad_().weight.requires_grad
        (False, True)
        """
        if requires_grad:
            raise RuntimeError(f"{type(self).__name__}'s table is frozen (quantized tables get no gradient); call "
                               "requires_grad_() on the modules that train (a StableEmbedding's norm) instead")
        return super().requires_grad_(False)

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
        device = self.weight.device
        probe = fn(torch.empty(0, dtype=self.dtype, device=device))
        if probe.dtype not in formats.DTYPES:  # .double(), .to(torch.float64), .type(...): before anything moves
            raise TypeError(f"{type(self).__name__} gives float32, bfloat16 or float16 rows; it cannot be cast to "
                            f"{probe.dtype} (the module is left as it was)")
        was_meta = self.weight.is_meta
        # Codes and float32 scales move (and follow to_empty, share_memory) but a cast never reaches them.
        codes = self._parameters["weight"] if self.is_quantized and _casts(fn, self.weight) else None
        kept = {name: self._buffers.pop(name) for name in self._SCALES
                if self._buffers.get(name) is not None and _casts(fn, self._buffers[name])}
        if codes is not None:
            del self._parameters["weight"]
        try:
            super()._apply(fn, recurse)
            kept = {name: tensor.to(probe.device) for name, tensor in kept.items()}
            if codes is not None:
                codes.data = codes.data.to(probe.device)
        finally:
            self._buffers.update(kept)
            if codes is not None:
                self._parameters["weight"] = codes
        self.dtype = probe.dtype
        if not self.is_quantized:
            # A float table that was on the meta device holds no values yet (to_empty): it is quantized once
            # loaded, never now (a module under several names is moved once per name).
            self._quantize_when_loaded = self._quantize_when_loaded or was_meta
            if self.weight.device.type in QUANTIZING_DEVICES and not self._quantize_when_loaded:
                self.quantize()
        return self

    def _state_or_raise(self) -> tuple[Tensor, Tensor, Tensor | None, int]:
        """The quantized state; a table not quantized yet is quantized first, where it is (bitsandbytes
        quantizes on any move to a device: a forward after ``.to("cpu")`` works there too)."""
        if not self.is_quantized:
            if torch.compiler.is_compiling() or self.weight.is_meta:
                raise RuntimeError(f"{type(self).__name__}: the table is not quantized yet; load a checkpoint into "
                                   "it, call .quantize() (or move the module to a CUDA device) before compiling, "
                                   "tracing or running it on the meta device")
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

    def _load_table(self, state_dict: dict, prefix: str, device: torch.device) -> Callable[[], None] | None:
        """Read this format's quantized entries onto ``device`` and return what puts them in place (the module is
        not touched before that), or None for a float table (the caller's). Raises ``CheckpointError``."""
        raise NotImplementedError

    def _load_float_table(self, weight: Tensor, prefix: str, device: torch.device) -> Callable[[], None]:
        """A float (V, D) table: kept as it is, or quantized at once if the module is quantized (or was built on
        the meta device by ``from_float``, to be quantized once loaded)."""
        if weight.dim() != 2 or tuple(weight.shape) != (self.num_embeddings, self.embedding_dim):
            raise CheckpointError(f"size mismatch for {prefix}weight: copying a param with shape "
                                  f"{tuple(weight.shape)} from checkpoint, the shape in current model is "
                                  f"{(self.num_embeddings, self.embedding_dim)}")
        table = weight.detach().to(device, self.dtype, copy=True)
        if self.is_quantized or self._quantize_when_loaded:
            try:
                state = self._quantize_table(table)
            except ValueError as exc:
                raise CheckpointError(f"{prefix}weight: the float table cannot be quantized: {exc}") from None
            return lambda: self._set_from_state(state)

        def keep_float() -> None:
            self._clear_state()
            self.weight = torch.nn.Parameter(table, requires_grad=False)

        return keep_float

    _KEYS: tuple[str, ...] = ("weight",)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        for hook in self._load_state_dict_pre_hooks.values():  # as torch.nn.Module's own loader runs them
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            if strict:  # every key this module would save (a quantized table is several)
                missing_keys.extend(key for key in (prefix + name for name in self._state_keys())
                                    if key not in state_dict)
        else:
            # Loaded onto the module's device; a module on the meta device, or loading with assign=True, takes
            # the checkpoint's. Everything is read and checked first: a load that fails changes nothing.
            assign = local_metadata.get("assign_to_params_buffers", False) or self.weight.is_meta
            device = weight.device if assign else self.weight.device
            try:
                commit = self._load_table(state_dict, prefix, device)
                if commit is None:
                    commit = self._load_float_table(weight, prefix, device)
            except CheckpointError as exc:
                error_msgs.append(f"{exc} (the module is left as it was)")
                return
            except Exception as exc:  # as torch.nn.Module's loader reports a failed copy
                error_msgs.append(f'While copying the parameter named "{prefix}weight", an exception occurred: '
                                  f"{exc.args} (the module is left as it was)")
                return
            commit()
        if strict:
            for key in state_dict:
                if key.startswith(prefix):
                    name = key[len(prefix):]
                    if name.split(".", 1)[0] not in self._modules and name not in self._KEYS:
                        unexpected_keys.append(key)

    def _clear_state(self) -> None:
        for name in self._SCALES:
            setattr(self, name, None)

    @classmethod
    def from_float(cls, module: torch.nn.Module, **options):
        """A quantized module from a float embedding (``torch.nn.Embedding``, triton_embed's or bitsandbytes'
        ``Embedding`` / ``StableEmbedding``: quantized now, where its table is) or from bitsandbytes' quantized
        module of the same format (its codes and scales taken as they are). A StableEmbedding source keeps
        its very ``norm``, whatever module it is. A source on the meta device gives an unquantized module on
        the meta device that quantizes the float table loaded into it (``load_state_dict``, also with
        ``assign=True``), or else at its first forward or move to CUDA. ``options``: ``quant_type``,
        ``blocksize`` for the 4-bit formats."""
        return convert.from_float(cls, module, **options)

    def to_bitsandbytes(self) -> torch.nn.Module:
        """bitsandbytes' module of this format holding these very codes and scales (needs bitsandbytes)."""
        return convert.to_bitsandbytes(self)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        return text + ("" if self.is_quantized else ", not quantized")
