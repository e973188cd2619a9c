"""Training data: the shard format (``shards``), reading samples (``samples``, ``images``), planning epochs over
shards (``shard_plan``), the loader (``loader``), hybrid batches (``hybrid``), caption files and the benchmark
test images that training data must not hold (``caption_files``, ``benchmark_images``)."""
