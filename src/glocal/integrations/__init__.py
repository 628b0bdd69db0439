"""Optional integrations with logging and training frameworks.

Each module imports its framework only when imported itself, and says which extra installs it:
``tensorboard`` (``pip install "glocal[tensorboard]"``), ``lightning`` (``glocal[lightning]``),
``transformers`` (``glocal[transformers]``).
"""
