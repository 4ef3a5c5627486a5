"""Benchmark and autotuning CLI: ``python -m triton_embed.bench``.

One job per file:

- ``bootstrap``: picks GPU or Triton-interpreter mode (re-executing with ``TRITON_INTERPRET=1`` on CPU);
- ``cli``: the command-line options and the run from start to end;
- ``cases``: the benchmark shapes and their inputs (Zipf / uniform ids);
- ``bytes_model``: the fewest bytes each op must move (for GB/s);
- ``impls``: triton_embed and its peers (reference path, bitsandbytes, torch.compile) as modules;
- ``tune``: autotuning of every kernel config and the per-GPU cache write;
- ``timing``: medians and percentiles, the copy-bandwidth ceiling, the zero-fill, peak memory;
- ``check``: errors against a float64 oracle;
- ``runner``: one case measured across implementations;
- ``report`` / ``plot``: the terminal table, results.json / .csv, report.md, plot.png.
"""
