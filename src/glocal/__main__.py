"""``python -m glocal``: the command line (also installed as the ``glocal`` command)."""

from glocal_bench.cli import main

raise SystemExit(main())
