"""Statistics over per-query vectors: bootstrap intervals, paired tests with Holm/BH corrections, Friedman/Nemenyi
ranks and critical-difference diagrams. Imports nothing of cbmir but errors."""
