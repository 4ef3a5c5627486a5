"""The one command for a lent GPU machine (``run``, started as ``python3 bench/device/run.py OUT``) and its
time-boxed parts (``parts``); the plan that shows on the CPU that it fits (``plan``, ``--validate --plan``), from
the run's kernel launches traced without running them (``trace``, ``run_trace``); the compile stage that
compiles those specializations ahead, in parallel (``compile_ahead``)."""
