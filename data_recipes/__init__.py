"""Recipes that build multilingual image–caption webdataset shards (``python -m data_recipes.NAME``)."""
