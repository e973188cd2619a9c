"""Zero-shot retrieval evaluation (XTD10, M3C), metrics and reports."""
