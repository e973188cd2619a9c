"""Any model the evaluators and the search index accept, reduced to normalised text and image embeddings."""
