"""Multi-domain data: preparation into MDS shards, the dynamic-proportion dataset, its dataloader."""
