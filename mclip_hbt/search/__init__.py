"""Search a picture folder in any language: an incremental index (SQLite catalog + faiss inverted file), queries in
several languages with their agreement, and a web page. ``python -m mclip_hbt.search --help``."""
