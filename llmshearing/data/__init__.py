"""Multi-domain data: preparation into MDS shards, the dynamic-proportion dataset, its dataloader."""

from llmshearing.data.dynamic_dataset import DomainStreamingDataset, DynamicStreamingDataset, ProportionChange

__all__ = ['DomainStreamingDataset', 'DynamicStreamingDataset', 'ProportionChange']
