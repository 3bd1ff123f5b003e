"""Multi-domain data: preparation into MDS shards, the dynamic-proportion dataset, its dataloader."""

from llmshearing.data.dynamic_dataset import DomainStreamingDataset, DynamicStreamingDataset, ProportionChange
from llmshearing.data.shared_memory import close_prefix_search_attachments, serialize_shm_prefix_registration

serialize_shm_prefix_registration()
close_prefix_search_attachments()

__all__ = ['DomainStreamingDataset', 'DynamicStreamingDataset', 'ProportionChange']
