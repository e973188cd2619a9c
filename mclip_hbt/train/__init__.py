"""Training: the options (``config``), the loop (``loop``), what feeds and stops it (``feed``), and what it writes
and reads back (``checkpoints``, ``output``, ``step_log``)."""
