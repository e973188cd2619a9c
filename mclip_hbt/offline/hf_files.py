"""Hugging Face folders that every transformers version the project allows (4.x and 5.x) reads."""
from __future__ import annotations

import json
import os
from pathlib import Path

#: transformers 5 writes its fast-tokenizer class as ``TokenizersBackend``, a name 4.x does not know;
#: ``PreTrainedTokenizerFast`` is that class's 4.x name, and 5.x reads it as the same class.
_CLASS_NAMES_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> Path:
    """``tokenizer.save_pretrained(directory)``, its config naming a class both transformers majors load."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in _CLASS_NAMES_4X:
        config["tokenizer_class"] = _CLASS_NAMES_4X[config["tokenizer_class"]]
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return directory
