"""Importable test helpers: file writers, configs, command lines (no fixtures: those live in conftest.py)."""
