"""The model: the CLIP with a multilingual text tower (``clip``), the text tower (``text_tower``), the
contrastive losses (``loss``), batched text encoding (``encoding``) and the layouts other tools load (``export``)."""
