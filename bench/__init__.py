"""Benchmark and autotuning CLI: ``python -m triton_embed.bench``.

One job per file:

- ``bootstrap``: picks GPU or Triton-interpreter mode (re-executing with ``TRITON_INTERPRET=1`` on CPU;
  without it for ``--plan``);
- ``cli``: the command-line options and the plain run from start to end;
- ``validate``: ``--validate``'s stages; ``stages``: stages run into a record file whatever happens;
  ``verdict``: the summary stage's record (also written afterwards for a run that was killed);
- ``plan`` / ``trace``: ``--validate --plan``, the GPU run planned on the CPU from its traced kernel launches;
  ``compile_ahead``: the compile stage, those specializations compiled in parallel before the run;
- ``device_run`` / ``device_parts``: the one command for a lent GPU machine and its time-boxed parts;
- ``tuning_cost``: what runtime tuning at first use costs a training step;
- ``sweep`` / ``sweep_special``: the correctness sweep of every op, option and dtype (and the > 2³¹ table,
  out-of-range ids, determinism, a CUDA-graph replay);
- ``cases``: the benchmark shapes and their inputs (Zipf / uniform ids);
- ``bytes_model`` / ``bytes_table``: the minimum bytes of each op and each implementation's own model;
  the README's table of them at the LM shapes;
- ``impls``: triton_embed and its peers (PyTorch eager, bitsandbytes, torch.compile, Liger-Kernel) as modules;
- ``tune``: autotuning of every kernel config and the per-GPU cache write;
- ``rounds``: interleaved timing rounds and their statistics;
- ``timing``: the timers, the copy-bandwidth ceiling, peak memory, deadlines, SIGTERM;
- ``check``: errors against a float64 oracle, the tolerance rule;
- ``runner``: one case measured across implementations;
- ``benchmark``: the cases in turn within a time budget, and the report files;
- ``summary``: the performance targets (README), met or missed;
- ``report`` / ``plot``: the terminal table, results.json / .csv, report.md, plot.png.
"""
if __name__ == "bench":  # found as a top-level package (Python started in the repository root): step aside
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), os.pardir, "kernels", "_shadow.py"))["step_aside"](
        __name__, __file__
    )
