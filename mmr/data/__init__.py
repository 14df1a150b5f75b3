"""Data side of mmr: the Sample record (`schema`) and streaming readers/writers (`io`)."""

from mmr.data.io import ReadStats, SampleWriter, read_samples, write_samples
from mmr.data.schema import Sample

__all__ = ["ReadStats", "Sample", "SampleWriter", "read_samples", "write_samples"]
