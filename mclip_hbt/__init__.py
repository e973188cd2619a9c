"""mclip_hbt: multilingual CLIP with hybrid-batch training."""
