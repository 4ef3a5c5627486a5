"""Swap the embeddings of an existing model for triton_embed's, in place: ``replace_embeddings(model)``."""
from __future__ import annotations

import logging
import sys
import warnings
from typing import TypeVar

import torch

from .nn import Embedding, StableEmbedding
from .quantized import Embedding4bit, Embedding8bit, StableEmbedding4bit, StableEmbedding8bit

__all__ = ["replace_embeddings"]

logger = logging.getLogger("triton_embed")

M = TypeVar("M", bound=torch.nn.Module)

#: The state a module holds in containers of its own; everything else in its ``__dict__`` is carried over.
_CONTAINERS = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")
#: Public names of the modules where the classes are defined.
_PUBLIC = {"torch.nn.modules.sparse": "torch.nn", "triton_embed.nn": "triton_embed",
           "triton_embed.quantized.int8": "triton_embed", "triton_embed.quantized.four_bit": "triton_embed"}
#: ``quantize=`` of :func:`replace_embeddings`: (plain class, StableEmbedding class, 4-bit quant_type or None).
_QUANTIZED = {"int8": (Embedding8bit, StableEmbedding8bit, None), "nf4": (Embedding4bit, StableEmbedding4bit, "nf4"),
              "fp4": (Embedding4bit, StableEmbedding4bit, "fp4")}


def _bitsandbytes_types() -> tuple[type | None, type | None]:
    """bitsandbytes' (Embedding, StableEmbedding), if bitsandbytes is loaded. A model cannot hold its modules
    otherwise, so it is never imported here (its import takes seconds)."""
    bnb_nn = sys.modules.get("bitsandbytes.nn")
    return getattr(bnb_nn, "Embedding", None), getattr(bnb_nn, "StableEmbedding", None)


def _qualname(cls: type) -> str:
    return f"{_PUBLIC.get(cls.__module__, cls.__module__)}.{cls.__qualname__}"


def _why_not(module: torch.nn.Module, keeps_norm: bool) -> str | None:
    """Why an embedding of a convertible type is left alone (something was added to the instance), or None."""
    if "forward" in vars(module):
        return "its forward is replaced on the instance (a hook library such as accelerate's?)"
    if not isinstance(module._parameters.get("weight"), torch.nn.Parameter):
        return "its weight is not a Parameter (a reparametrisation such as weight_norm?)"
    if set(module._parameters) != {"weight"} or module._buffers:
        return "it holds parameters or buffers besides its weight"
    expected = {"norm"} if keeps_norm else set()
    if set(module._modules) != expected or (keeps_norm and type(module._modules["norm"]) is not torch.nn.LayerNorm):
        return "it holds submodules of its own"
    return None


def _convert(old: torch.nn.Embedding, cls: type[Embedding], keeps_norm: bool, deterministic: bool) -> Embedding:
    """A ``cls`` holding ``old``'s very weight Parameter, options, hooks, mode and instance attributes."""
    weight = old.weight
    new = cls(
        old.num_embeddings, old.embedding_dim, old.padding_idx, old.max_norm, old.norm_type,
        old.scale_grad_by_freq, old.sparse, _weight=weight, device=weight.device,
        _freeze=not weight.requires_grad, deterministic=deterministic,
    )  # ``_weight`` skips the init; torch.nn.Embedding wraps it in a new Parameter, so put the old one back:
    new.weight = weight
    if keeps_norm:
        new.norm = old.norm  # bitsandbytes' StableEmbedding: the same LayerNorm, parameters and all
    elif cls is StableEmbedding:  # a fresh LayerNorm, float32 even under a lower default dtype (as in from_pretrained)
        new.norm = torch.nn.LayerNorm(old.embedding_dim, device=weight.device, dtype=torch.float32).train(old.training)
    for key, value in vars(old).items():  # hooks (the same dicts, so their handles still remove them),
        if key not in _CONTAINERS and key != "deterministic":  # ``training``, and attributes set on the instance
            vars(new)[key] = value
    return new


def _quantized(old: torch.nn.Embedding, quantize: str, stable: bool) -> torch.nn.Module:
    """``old`` as a quantized module (its options, hooks, mode and instance attributes; a StableEmbedding's very
    norm), the table quantized where it is."""
    plain, stable_cls, quant_type = _QUANTIZED[quantize]
    cls = stable_cls if stable else plain
    new = cls.from_float(old, **({"quant_type": quant_type} if quant_type else {}))
    for key, value in vars(old).items():  # hooks, ``training``, attributes set on the instance
        if key not in _CONTAINERS and key not in ("deterministic", "dtype", "quant_type", "blocksize", "quant_storage"):
            vars(new)[key] = value
    return new


def replace_embeddings(model: M, *, stable: bool = False, deterministic: bool = False,
                       quantize: str | None = None) -> M:
    """Replace, in place, every plain embedding in ``model`` by triton_embed's, and return ``model``.

    Converted are the submodules whose type is exactly ``torch.nn.Embedding`` (and, when bitsandbytes is
    loaded, exactly ``bitsandbytes.nn.Embedding`` or ``bitsandbytes.nn.StableEmbedding``). Each becomes a
    :class:`~triton_embed.Embedding` (bitsandbytes' ``StableEmbedding``: a :class:`~triton_embed.StableEmbedding`
    keeping its very ``norm`` LayerNorm) that holds the **same weight Parameter** (so a tied LM head stays tied
    and an optimizer built before the call keeps updating it), every option (``padding_idx``, ``max_norm``,
    ``norm_type``, ``scale_grad_by_freq``, ``sparse``), the device, dtype, train/eval mode, the hooks
    registered on it and the state_dict keys. A module reachable under several names becomes one new module
    in all of them. One line per replaced module is logged on the ``"triton_embed"`` logger (INFO).

    Left alone: triton_embed's own modules (with ``quantize``, its float ones are quantized);
    ``torch.nn.EmbeddingBag`` (not an embedding here); every other subclass of ``torch.nn.Embedding`` (a scaled
    word embedding with its own forward, or a subclass that only changes ``__init__``: replacing it would drop
    its class; bitsandbytes' quantized modules: see ``Embedding8bit.from_float``), and plain embeddings that were
    altered on the instance (a patched ``forward``, a reparametrised weight, extra parameters): these raise one
    warning that names them.

    Args:
        model: any ``torch.nn.Module``; a bare embedding works too (then the new module is returned).
        stable: make plain embeddings :class:`~triton_embed.StableEmbedding` (bitsandbytes' recipe for
            training with 8-bit optimizers), with a fresh ``torch.nn.LayerNorm`` (float32 parameters, on the
            weight's device) after the lookup. That **changes the model's function** and adds
            ``<name>.norm.weight`` / ``<name>.norm.bias`` to its state_dict: it is for training from scratch;
            a pretrained table followed by a fresh LayerNorm is a different model. Position embeddings are
            converted as well.
        deterministic: set the converted modules' (and existing triton_embed modules') ``deterministic`` flag.
            The backward is deterministic by construction anyway: the flag is kept for symmetry with the modules.
        quantize: ``"int8"``, ``"nf4"`` or ``"fp4"``: convert to the quantized modules instead
            (:class:`~triton_embed.Embedding8bit` / :class:`~triton_embed.Embedding4bit`, or their StableEmbedding
            forms for StableEmbeddings and with ``stable``), the tables quantized where they are, frozen;
            triton_embed's own float modules are quantized too. Tables with ``max_norm`` are left alone (it
            rescales the table in place). Embeddings sharing one table share one quantized module;
            a table tied to another module (an LM head) stays float there, with a warning (the model holds both).

    Returns:
        ``model`` (the new module if ``model`` itself was an embedding).

    >>> import torch, triton_embed
    >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4, padding_idx=0), torch.nn.Linear(4, 2))
    >>> weight = model[0].weight
    >>> model = triton_embed.replace_embeddings(model)
    >>> type(model[0]).__name__, model[0].weight is weight, model[0].padding_idx
    ('Embedding', True, 0)
    >>> model(torch.tensor([[1, 0, 3]])).shape
    torch.Size([1, 3, 2])
    >>> sorted(triton_embed.replace_embeddings(model, stable=True).state_dict())  # already converted: unchanged
    ['0.weight', '1.bias', '1.weight']
    """
    if quantize is not None and quantize not in _QUANTIZED:
        raise ValueError(f"quantize must be None or one of {tuple(_QUANTIZED)}, got {quantize!r}")
    bnb_embedding, bnb_stable = _bitsandbytes_types()
    plain = (torch.nn.Embedding, bnb_embedding) + ((Embedding, StableEmbedding) if quantize is not None else ())
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name or "<the model itself>")

    replaced: dict[int, torch.nn.Module] = {}
    skipped: list[str] = []
    # quantize: embeddings sharing one table (T5's shared / encoder / decoder) share one quantized module.
    quantized_tables: dict[tuple, torch.nn.Module] = {}
    float_tables: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for module in model.modules():  # each module once, however many names it has
        if isinstance(module, (Embedding8bit, Embedding4bit)):
            continue  # triton_embed's quantized modules
        if isinstance(module, Embedding) and (quantize is None or type(module) not in (Embedding, StableEmbedding)):
            if deterministic:
                module.deterministic = True
            continue
        if not isinstance(module, torch.nn.Embedding):
            continue
        kind = type(module)
        label = f"{', '.join(names[id(module)])} ({_qualname(kind)})"
        if kind not in plain and kind is not bnb_stable:
            own = "with its own forward" if kind.forward is not torch.nn.Embedding.forward else "a subclass"
            skipped.append(f"{label}: {own}")
            continue
        keeps_norm = kind is bnb_stable or kind is StableEmbedding
        reason = _why_not(module, keeps_norm)
        if reason is None and quantize is not None and module.max_norm is not None:
            reason = "max_norm rescales the table in place, which a quantized table cannot do"
        if reason is not None:
            skipped.append(f"{label}: {reason}")
            continue
        if quantize is not None:
            same_table = (id(module.weight), kind, module.padding_idx, module.scale_grad_by_freq, module.sparse)
            new = quantized_tables.get(same_table)
            if new is None:
                try:
                    new = quantized_tables[same_table] = _quantized(module, quantize, stable or keeps_norm)
                except ValueError as exc:  # a table the format cannot hold (NaN, inf; int8: beyond float16)
                    raise ValueError(f"replace_embeddings(quantize={quantize!r}) cannot quantize {label}: {exc}; "
                                     "nothing was replaced") from exc
            table_names = float_tables.setdefault(id(module.weight), (module.weight, []))[1]
            table_names += names[id(module)]
        else:
            new = _convert(module, StableEmbedding if stable or keeps_norm else Embedding, keeps_norm, deterministic)
        replaced[id(module)] = new
        logger.info("replaced %s: %s -> %s", ", ".join(names[id(module)]), _qualname(kind), _qualname(type(new)))

    for parent in list(model.modules()):
        for child_name, child in parent._modules.items():
            if child is not None and id(child) in replaced:
                parent._modules[child_name] = replaced[id(child)]
    if skipped:
        warnings.warn("replace_embeddings left these embeddings as they are: " + "; ".join(skipped), stacklevel=2)
    tied = _still_tied(model, float_tables)
    if tied:
        warnings.warn("replace_embeddings(quantize=...): " + "; ".join(tied) + ": the model now holds the float "
                      "table and its quantized copy, more memory than before; untie them (or leave these "
                      "embeddings float) to save memory", stacklevel=2)
    return replaced.get(id(model), model)  # type: ignore[return-value]


def _still_tied(model: torch.nn.Module, float_tables: dict[int, tuple[torch.Tensor, list[str]]]) -> list[str]:
    """For each quantized table that another module still holds as a float parameter (a tied LM head):
    '<embedding names> tied to <parameter names>'."""
    holders: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in float_tables and param is float_tables[id(param)][0]:
            holders.setdefault(id(param), []).append(name)
    return [f"{', '.join(float_tables[key][1])} tied to {', '.join(params)}" for key, params in holders.items()]
