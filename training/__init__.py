"""Offline training and evaluation around the `model` package."""
