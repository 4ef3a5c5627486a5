"""Benchmark and autotuning CLI: ``python -m triton_embed.bench``.

One job per file:

- ``bootstrap``: picks GPU or Triton-interpreter mode (re-executing with ``TRITON_INTERPRET=1`` on CPU;
  without it for ``--plan``);
- ``cli`` / ``arguments``: the command line and its checks, the plain run from start to end; ``session``: what
  the plain run and ``--validate`` share (peers, tuning of the cases, the environment record);
- ``validate``: ``--validate``'s stages; ``stages``: stages run into a record file whatever happens;
  ``verdict``: the summary stage's record (also written afterwards for a run that was killed);
- ``sweep`` / ``sweep_special`` on ``sweep_core``: the correctness sweep of every op, option and dtype (and
  the > 2³¹ table, out-of-range ids, determinism, a CUDA-graph replay);
- ``device/``: the one command for a lent GPU machine, its time-boxed parts, and its plan (``--validate --plan``);
- ``cases``: the benchmark shapes and their inputs (Zipf / uniform ids);
- ``impls``: triton_embed and its peers (PyTorch eager, bitsandbytes, torch.compile, Liger-Kernel) as modules;
- ``tune``: autotuning of every kernel config and the per-GPU cache write; ``tuning_cost``: what runtime tuning
  at first use costs a training step;
- ``host_time`` / ``host_timer``: host time per call and the CPU path against their peers;
- ``rounds``: interleaved timing rounds and their statistics;
- ``timing``: the timers, the copy-bandwidth ceiling, peak memory, deadlines, SIGTERM;
- ``check``: errors against a float64 oracle, the tolerance rule;
- ``runner``: one case measured across implementations;
- ``benchmark``: the cases in turn within a time budget, and the report files;
- ``summary``: the performance targets, met or missed;
- ``bytes_model`` / ``bytes_table`` / ``roofline``: the minimum bytes of each op and each implementation's own
  model, and the static roofline read from the compiled code (``roofline_data``): the docs' tables;
- ``report`` / ``plot`` / ``files``: the terminal table, results.json / .csv, report.md, plot.png, written
  atomically and as strict JSON.
"""
if __name__ == "bench":  # found as a top-level package (Python started in the repository root): step aside
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), os.pardir, "kernels", "_shadow.py"))["step_aside"](
        __name__, __file__
    )
