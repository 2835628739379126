"""Geometry: LoRA weight geometry computed from the factors, and linear mode connectivity."""
