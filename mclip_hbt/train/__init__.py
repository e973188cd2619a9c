"""Training: the options (``config``), the loop (``loop``), what feeds and stops it (``feed``), how the text
encoder learns without forgetting (``text_learning``), and what it writes and reads back (``checkpoints``,
``output``, ``step_log``)."""
