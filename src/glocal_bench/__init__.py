"""glocal_bench: the application around the glocal library.

Benchmark tasks (generated or bundled data only), the experiment runner, the Optuna search, the
estimator benchmark, result files and reports, and the ``glocal`` command line. None of this is
part of the library's API (``import glocal``); it needs the ``tasks`` extra.
"""
