"""Directions: extraction methods, the Direction artifact and converters to other tools' formats."""
