"""Data curation: collect -> clean -> distill -> select, plus dedup and difficulty.

    mmr data run --config recipes/data/mfr.yaml --step all --output DIR [--input FILE] [k=v ...]
    mmr data dedup --config recipes/data/omr.yaml --input FILE --output DIR
    mmr data difficulty --config recipes/data/mfr.yaml --input DIR/selected --output DIR

One YAML (`config.PipelineConfig`, a section per stage) drives every stage. Each stage
streams Samples shard by shard (`runner.run_stage`), writes mmr parquet shards under
DIR/<collected|cleaned|distilled|selected|deduped|difficulty>/ with a `_manifest.json`
that makes it resumable, and a report of counts and drop reasons to DIR/reports/<stage>.json.
The shards run here (`executor: local`, `num_proc` processes) or as Ray tasks on a cluster
(`executor: ray`, `ray_executor`), with the same outputs either way.
Models are reached through OpenAI-compatible servers (`client.ChatClient`); answers are
checked with mmr.rewards (`verify`). Importing this package starts nothing.
"""

from mmr.data.pipeline.config import PipelineConfig

__all__ = ["PipelineConfig"]
