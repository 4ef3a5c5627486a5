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

One home for the feature: ``formats`` (the codes and scales, bitsandbytes' layouts) → ``reference`` (the lookups in
PyTorch alone) → ``ops`` (launchers and custom ops of the fused gather + dequantize kernels) → ``convert``
(``from_float``, ``to_bitsandbytes``) → ``base`` (what every quantized module shares: quantization, casts, moves,
loading) → ``int8`` and ``four_bit`` (the modules).
"""
from .four_bit import Embedding4bit, EmbeddingFP4, EmbeddingNF4, StableEmbedding4bit
from .int8 import Embedding8bit, StableEmbedding8bit

__all__ = ["Embedding8bit", "Embedding4bit", "EmbeddingNF4", "EmbeddingFP4", "StableEmbedding8bit",
           "StableEmbedding4bit"]
