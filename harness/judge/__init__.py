"""Judging: comparisons, stage attribution, goldens, provenance, the verdict of a run."""
