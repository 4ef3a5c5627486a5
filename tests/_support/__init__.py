"""Helpers the tests share: the float64 oracle and tolerance rule (``oracle``), hypothesis strategies
(``strategies``), the dispatch recorder behind the traffic budgets (``recorder``) and the optional-peer marks
(``peers``). Importable as ``_support`` because ``tests/`` (the conftest's folder) is on ``sys.path``."""
