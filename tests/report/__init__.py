"""Tests of cbmir.report, one module per module of the package (a package: its conftest stays its own)."""
