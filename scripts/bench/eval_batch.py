"""One eval batch of a recipe with the ``dynamic_loading`` callback: the full-vocabulary cross-entropy computed once
(``DomainCrossEntropy`` + token accuracy + the per-domain sums) against the previous computation (llm-foundry's
``LanguageCrossEntropy``, ``LanguagePerplexity``, ``TokenAccuracy``, and the callback's own cross-entropy of the
logits).

Both run on the same model, batch and logits-producing forward (``eval_forward`` of Composer's ``HuggingFaceModel``,
which llm-foundry's ``hf_causal_lm`` is), interleaved in one process so that machine noise hits them alike. Printed:
the median seconds per eval batch of each, the forward alone, and before / after (medians of the per-repeat ratios).

    .venv/bin/python -m scripts.bench.eval_batch \\
        [--vocab 32000 --hidden 256 --layers 2 --batch 4 --seq-len 512 --repeats 6] [--quick]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import HuggingFaceModel
from llmfoundry.metrics import TokenAccuracy
from transformers import LlamaConfig, LlamaForCausalLM

from llmshearing.callbacks.dynamic_loading import domain_loss_sums, next_token_targets
from llmshearing.metrics import DomainCrossEntropy
from scripts.bench.pruning_step import DTYPES, interleaved_times
from scripts.bench.quick import parse_args

NUM_DOMAINS = 7


def previous_domain_loss_sums(logits: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """The callback's previous computation: its own full-vocabulary cross-entropy of the logits, per domain."""
    targets = next_token_targets(labels)
    token_losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction='none').view(
        targets.shape
    )
    loss_sums = torch.zeros(NUM_DOMAINS, dtype=torch.float64, device=logits.device)
    return loss_sums.index_add_(0, domains, token_losses.sum(dim=1).double())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--vocab', type=int, default=32000)
    parser.add_argument('--hidden', type=int, default=256)
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--seq-len', type=int, default=512)
    parser.add_argument('--repeats', type=int, default=6)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    args = parse_args(
        parser, {'vocab': 1024, 'hidden': 64, 'layers': 1, 'batch': 2, 'seq_len': 32, 'repeats': 1},
    )
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_attention_heads=args.hidden // 64,
        intermediate_size=int(args.hidden * 2.75), num_hidden_layers=args.layers, attn_implementation='sdpa',
    )
    model = HuggingFaceModel(
        LlamaForCausalLM(config).to(device, DTYPES[args.dtype]), use_logits=True, shift_labels=True,
    ).eval()
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    domains = torch.arange(args.batch, device=device) % NUM_DOMAINS
    previous_metrics = [LanguageCrossEntropy(), LanguagePerplexity(), TokenAccuracy()]
    metrics = [DomainCrossEntropy(), TokenAccuracy()]
    for metric in previous_metrics + metrics:
        metric.to(device)

    def forward() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = {'input_ids': input_ids, 'labels': input_ids.clone(), 'domain': domains}
        return batch, model.eval_forward(batch)

    @torch.no_grad()
    def previous() -> None:
        labels = input_ids.clone()  # the callback's copy, taken before eval_forward shifts them
        batch, logits = forward()
        previous_domain_loss_sums(logits, labels, domains)
        for metric in previous_metrics:
            model.update_metric(batch, logits, metric)

    @torch.no_grad()
    def once() -> None:
        batch, logits = forward()
        for metric in metrics:
            model.update_metric(batch, logits, metric)
        domain_loss_sums(metrics[0].take_sample_losses(), NUM_DOMAINS)

    @torch.no_grad()
    def forward_only() -> None:
        forward()

    previous_times, once_times = interleaved_times(previous, once, args.repeats, device)
    forward_times, _ = interleaved_times(forward_only, once, args.repeats, device)
    ratios = [before / after for before, after in zip(previous_times, once_times)]
    print(
        f'eval batch {args.batch} x {args.seq_len} tokens, vocabulary {args.vocab}, hidden {args.hidden}, '
        f'{args.layers} layers, {args.dtype} on {device}, {args.repeats} repeats (medians):',
    )
    print(f'  before (cross-entropy 3 times + token accuracy): {statistics.median(previous_times):.3f} s')
    print(f'  after (cross-entropy once + token accuracy): {statistics.median(once_times):.3f} s')
    print(f'  forward alone: {statistics.median(forward_times):.3f} s')
    print(f'  before / after: {statistics.median(ratios):.2f}x')


if __name__ == '__main__':
    main()
