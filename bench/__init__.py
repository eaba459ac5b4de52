"""The benchmark suite: ``python -m bench [names...] [--quick] [--json-out DIR]``.

One module per benchmark, each with ``run(env, quick) -> bench.common.Result``; the runner is
``bench/__main__.py``. Figures are printed and written as JSON, never asserted in tests.
"""
