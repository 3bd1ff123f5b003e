"""Multi-domain data: preparation into MDS shards, the dynamic-proportion dataset, its dataloader."""

from llmshearing.data.dynamic_dataset import DomainStreamingDataset, DynamicStreamingDataset, ProportionChange
from llmshearing.data.shared_memory import serialize_shm_prefix_registration

serialize_shm_prefix_registration()

__all__ = ['DomainStreamingDataset', 'DynamicStreamingDataset', 'ProportionChange']
