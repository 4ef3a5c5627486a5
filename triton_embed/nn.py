"""Modules: drop-in replacements for ``bitsandbytes.nn.Embedding`` (a ``torch.nn.Embedding`` subclass)."""
from __future__ import annotations

import weakref

import torch
from torch import Tensor

from . import functional
from .runtime.dispatch import fusable_layer_norm
from .runtime.validation import normalize_padding_idx


def _register_32bit_optimizer_state(module: torch.nn.Module) -> None:
    """As bitsandbytes does: keep 32-bit optimizer state for embedding weights when its 8-bit optimizers run.

    bitsandbytes' manager keeps every registered module in a list for good, so a table would never be
    freed; it gets a weak proxy instead, and the entry leaves the list when the module is collected."""
    try:
        from bitsandbytes.optim import GlobalOptimManager
    except Exception:  # bitsandbytes is optional; without it there is nothing to register with
        return
    manager = GlobalOptimManager.get_instance()
    manager.register_module_override(weakref.proxy(module), "weight", {"optim_bits": 32})
    entries = getattr(manager, "module_weight_config_triple", None)
    if isinstance(entries, list) and entries:
        weakref.finalize(module, _forget_entry, entries, entries[-1])


def _forget_entry(entries: list, entry: tuple) -> None:
    for i, other in enumerate(entries):
        if other is entry:
            del entries[i]
            return


class Embedding(torch.nn.Embedding):
    """A lookup table on Triton kernels; drop-in for ``bitsandbytes.nn.Embedding`` and ``torch.nn.Embedding``.

    Same constructor as bitsandbytes (plus ``dtype``), xavier-uniform init with the padding row zeroed,
    the same state_dict (``weight``), all seven ``F.embedding`` options.

    Args:
        num_embeddings: rows in the table.
        embedding_dim: size of each row.
        padding_idx: row whose gradient stays zero (and is zeroed at init); negative counts from the end.
        max_norm: rows looked up with a larger ``norm_type``-norm are rescaled in place to ``max_norm``.
        norm_type: p of the p-norm for ``max_norm``.
        scale_grad_by_freq: divide gradients by the ids' counts in the batch.
        sparse: sparse COO weight gradients.
        _weight: an initial table (no init is run then).
        device, dtype: where and in which dtype the table is created.
        _freeze: with ``_weight``, keep the table out of autograd (as ``torch.nn.Embedding``).
        deterministic: always use the bitwise-repeatable backward.

    >>> import torch, triton_embed
    >>> emb = triton_embed.Embedding(10, 4, padding_idx=0)
    >>> emb(torch.tensor([[1, 0, 3]])).shape
    torch.Size([1, 3, 4])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        _freeze: bool = False,
        deterministic: bool = False,
    ) -> None:
        normalize_padding_idx(padding_idx, num_embeddings)  # our error (a ValueError too) before torch's assert
        self.deterministic = deterministic
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
            _weight, _freeze, device=device, dtype=dtype,
        )
        _register_32bit_optimizer_state(self)

    #: The ``triton_embed.parallel`` style that parallelized this module, if any: set on the instance under
    #: ``parallel.styles.STYLE_ATTRIBUTE`` (this name); the forward then calls its ``sharded_forward``. A class
    #: default rather than a ``hasattr`` test: a missing attribute costs a raised AttributeError on every call.
    _triton_embed_parallel = None

    def reset_parameters(self) -> None:
        """bitsandbytes' init: xavier-uniform weight, then the padding row zeroed. An empty table (no rows or
        no columns) has nothing to initialise (xavier's bound would divide by zero)."""
        if self.weight.numel():
            torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def forward(self, input: Tensor) -> Tensor:
        if self._triton_embed_parallel is not None:  # parallelized by triton_embed.parallel: its sharded lookup
            return self._triton_embed_parallel.sharded_forward(self, input)
        return functional.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
            self.sparse, deterministic=self.deterministic,
        )

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + ", deterministic=True" if self.deterministic else text




class StableEmbedding(Embedding):
    """Lookup + LayerNorm on fused Triton kernels; drop-in for ``bitsandbytes.nn.StableEmbedding``.

    Forward, as bitsandbytes: ``self.norm(F.embedding(...).to(torch.get_default_dtype())).to(weight.dtype)``,
    computed by one kernel that keeps only the indices and a float32 mean/rstd per token for backward.
    ``self.norm`` is a ``torch.nn.LayerNorm(embedding_dim)`` created without a dtype (float32 parameters),
    so the state_dict holds ``weight``, ``norm.weight`` and ``norm.bias`` like bitsandbytes'. Unlike
    bitsandbytes 0.50, ``device`` and ``dtype`` are honoured as ``torch.nn.Embedding`` honours them.

    Args:
        num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
        _weight, device, dtype, _freeze, deterministic: as :class:`Embedding`.

    >>> import torch, triton_embed
    >>> emb = triton_embed.StableEmbedding(10, 4, padding_idx=0)
    >>> out = emb(torch.tensor([[1, 0, 3]]))
    >>> out.shape, sorted(emb.state_dict())
    (torch.Size([1, 3, 4]), ['norm.bias', 'norm.weight', 'weight'])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        _freeze: bool = False,
        deterministic: bool = False,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
            _weight, device, dtype, _freeze=_freeze, deterministic=deterministic,
        )
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)

    def forward(self, input: Tensor) -> Tensor:
        if self._triton_embed_parallel is not None:
            return self._triton_embed_parallel.sharded_forward(self, input)
        norm = self.norm
        if not fusable_layer_norm(norm, self.embedding_dim):  # another norm, or hooks on it: bitsandbytes' graph
            rows = functional.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                        self.scale_grad_by_freq, self.sparse, deterministic=self.deterministic)
            return norm(rows.to(torch.get_default_dtype())).to(self.weight.dtype)
        return functional.stable_embedding(
            input, self.weight, norm.weight, norm.bias, self.padding_idx, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.sparse, norm.eps, deterministic=self.deterministic,
        )


__all__ = ["Embedding", "StableEmbedding"]
