"""Recipes: the end-to-end demo and one module per seed study."""
