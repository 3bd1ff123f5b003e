"""Tokens per second of ``llmshearing prepare-data`` against llm-foundry's ``convert_dataset_json``.

Both read the same JSON lines with the same tokenizer and write ``seq_len`` MDS samples of the same token
stream (documents as BOS + tokens + EOS): the script checks that the samples are identical. llm-foundry's
converter tokenises in one process (its ``num_workers`` argument is unused); prepare-data runs with
``--workers 1`` (one tokenising process beside the reading/writing one) and with ``--workers 2``.
Each figure is the best of ``--rounds`` rounds, run alternately. Wall time includes loading the tokenizer.
Each domain's files are joined into one file, so that both tools read the documents in the same order
(llm-foundry globs a folder unsorted), and llm-foundry's converter runs once per domain (it fails on a
folder whose records' extra fields differ).

Data: the ``c4-rp`` and ``stackexchange`` domains of ``../shared/data/redpajama-sample`` with the Mistral
tokenizer when present, else synthetic text with the offline byte-level tokenizer; ``--quick`` takes a little synthetic
text either way.

    .venv/bin/python -m scripts.bench.prepare_data [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts.bench.quick import parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / 'shared'
SAMPLE_DOMAINS = ('c4-rp', 'stackexchange')
MISTRAL_TOKENIZER = SHARED / 'tokenizers' / 'mistral-7b-v0.1' / 'tokenizer.model'
SYNTHETIC_DOMAINS = ('synthetic-a', 'synthetic-b')
SYNTHETIC_DOCUMENTS = {'full': 1000, 'quick': 50}


def make_inputs(work: Path, quick: bool) -> tuple[Path, list[str], Path, str]:
    """Write the input folder and a tokenizer folder; return them, the domains and a description."""
    from transformers import LlamaTokenizerFast

    from llmshearing.toy import byte_level_tokenizer

    input_dir = work / 'input'
    input_dir.mkdir()
    sample = SHARED / 'data' / 'redpajama-sample'
    if not quick and sample.is_dir() and MISTRAL_TOKENIZER.is_file():
        domains = list(SAMPLE_DOMAINS)
        for domain in domains:
            (input_dir / domain).mkdir()
            with open(input_dir / domain / f'{domain}.jsonl', 'wb') as file:
                for path in sorted((sample / domain).glob('*.jsonl')):
                    file.write(path.read_bytes())
        tokenizer = LlamaTokenizerFast(vocab_file=str(MISTRAL_TOKENIZER), legacy=False)
        description = f'redpajama-sample {" + ".join(domains)}, Mistral tokenizer'
    else:
        domains = list(SYNTHETIC_DOMAINS)
        rng = random.Random(0)
        words = [''.join(rng.choices('abcdefghijklmnopqrstuvwxyz', k=rng.randint(2, 9))) for _ in range(5000)]
        for domain in domains:
            (input_dir / domain).mkdir()
            with open(input_dir / domain / 'synthetic.jsonl', 'w') as file:
                for _ in range(SYNTHETIC_DOCUMENTS['quick' if quick else 'full']):
                    file.write(json.dumps({'text': ' '.join(rng.choices(words, k=rng.randint(50, 800)))}) + '\n')
        tokenizer = byte_level_tokenizer()
        description = 'synthetic text, byte-level tokenizer'
    tokenizer_dir = work / 'tokenizer'
    tokenizer.save_pretrained(tokenizer_dir)
    return input_dir, domains, tokenizer_dir, description


def run_llm_foundry(input_dir: Path, domains: list[str], out: Path, tokenizer_dir: Path, seq_len: int) -> float:
    from llmfoundry.command_utils.data_prep.convert_dataset_json import convert_dataset_json
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    adds_bos = tokenizer('x')['input_ids'][:1] == [tokenizer.bos_token_id]  # Llama's does, the byte-level one not
    start = time.perf_counter()
    for domain in domains:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            convert_dataset_json(
                path=str(input_dir / domain), out_root=str(out / domain), compression=None, concat_tokens=seq_len,
                split='train', tokenizer=str(tokenizer_dir), bos_text='' if adds_bos else tokenizer.bos_token,
                eos_text=tokenizer.eos_token, num_workers=1,
            )
    return time.perf_counter() - start


def run_prepare_data(
    input_dir: Path, domains: list[str], out: Path, tokenizer_dir: Path, seq_len: int, workers: int
) -> float:
    from llmshearing.data.prepare import prepare_data

    start = time.perf_counter()
    prepare_data(input_dir, out, tokenizer_dir, seq_len, eval_samples=0, workers=workers, domains=domains)
    return time.perf_counter() - start


def read_tokens(mds_dir: Path) -> np.ndarray:
    from streaming import LocalDataset

    dataset = LocalDataset(str(mds_dir))
    return np.stack([dataset[index]['tokens'].astype(np.int64) for index in range(len(dataset))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seq-len', type=int, default=4096)
    parser.add_argument('--rounds', type=int, default=2)
    args = parse_args(parser, {'seq_len': 512, 'rounds': 1})
    logging.basicConfig(level=logging.WARNING)

    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ['HF_DATASETS_CACHE'] = str(work / 'hf-datasets-cache')  # llm-foundry must not reuse a cache
        os.environ['HF_DATASETS_OFFLINE'] = '1'
        input_dir, domains, tokenizer_dir, description = make_inputs(work, args.quick)
        runs = {'llm-foundry convert_dataset_json': [], 'prepare-data --workers 1': [], 'prepare-data --workers 2': []}
        for round_index in range(args.rounds):
            out = work / f'round{round_index}'
            runs['llm-foundry convert_dataset_json'].append(
                run_llm_foundry(input_dir, domains, out / 'foundry', tokenizer_dir, args.seq_len)
            )
            runs['prepare-data --workers 1'].append(
                run_prepare_data(input_dir, domains, out / 'workers1', tokenizer_dir, args.seq_len, workers=1)
            )
            runs['prepare-data --workers 2'].append(
                run_prepare_data(input_dir, domains, out / 'workers2', tokenizer_dir, args.seq_len, workers=2)
            )

        first_round = work / 'round0'
        foundry_samples = np.concatenate([read_tokens(first_round / 'foundry' / domain) for domain in domains])
        ours_samples = np.concatenate([read_tokens(first_round / 'workers1' / 'train' / domain) for domain in domains])
        identical = foundry_samples.shape == ours_samples.shape and bool((foundry_samples == ours_samples).all())
        tokens = ours_samples.size

    print(f'data: {description}; seq_len {args.seq_len}; {len(ours_samples)} samples, {tokens} tokens')
    print(f'identical samples from both tools: {identical}')
    print(f'cpus: {os.cpu_count()}, load average at the start: {load_average:.2f}; best of {args.rounds} rounds')
    baseline = tokens / min(runs['llm-foundry convert_dataset_json'])
    for name, seconds in runs.items():
        rate = tokens / min(seconds)
        print(f'{name:34s} {min(seconds):7.2f} s  {rate / 1e3:8.1f} k tokens/s  ratio {rate / baseline:5.2f}')


if __name__ == '__main__':
    main()
