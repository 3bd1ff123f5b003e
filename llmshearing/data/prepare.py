"""Per-domain JSON lines to tokenised MDS shards for training and evaluation (``llmshearing prepare-data``).

INPUT_DIR holds one folder per domain with ``*.jsonl``, ``*.jsonl.gz`` or ``*.jsonl.zst`` files of records
that carry a ``text`` field (other fields are ignored). Every document becomes BOS + tokens + EOS (each
special token where the tokenizer has one); a domain's documents are concatenated in file-name order and
cut into ``seq_len`` samples. The tokens after a split's last full sample are dropped and counted.

Evaluation takes a domain's first whole documents in file order until it has ``eval_samples`` samples, from its
eval files: every file but the last (the only file of a single-file domain). Every other document goes to
training, the rest of the eval files included, so the two splits share no document and every line of every
file is read once. The tokens of the last eval document after the last eval sample are dropped and counted. Per
domain the manifest's ``read`` tokens equal the ``tokens`` plus ``dropped_tokens`` of both splits.

OUTPUT_DIR gets ``train/<domain>/``, ``eval/<domain>/`` and ``eval/eval_merge/`` (MDS with columns
``tokens`` and ``domain``) and ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from streaming import MDSWriter
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import AutoTokenizer, LlamaTokenizerFast, PreTrainedTokenizerFast

from llmshearing.checks import ParameterError, check_output_dir
from llmshearing.choices import DEFAULT_EVAL_SAMPLES

log = logging.getLogger(__name__)

INPUT_SUFFIXES = ('.jsonl', '.jsonl.gz', '.jsonl.zst')
EVAL_MERGE = 'eval_merge'
CHUNK_BYTES = 1 << 18
SKIPPED_RECORDS_LISTED = 10


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a local Hugging Face tokenizer folder, or a SentencePiece ``tokenizer.model`` file (Llama style).

    The tokenizer must be fast (Rust) and have a BOS or an EOS token to separate documents.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'tokenizer {path} does not exist')
    try:
        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        else:
            tokenizer = LlamaTokenizerFast(vocab_file=str(path), legacy=False)
    except Exception as error:  # the loaders raise OSError, ValueError, protobuf and sentencepiece errors
        raise ValueError(f'tokenizer {path} cannot be loaded: {error}') from error
    if not tokenizer.is_fast:
        raise ValueError(f'tokenizer {path} has no fast (Rust) version')
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(f'tokenizer {path} has neither a BOS nor an EOS token to separate documents')
    return tokenizer


@dataclass
class ReadStats:
    """Every document read from one domain's files: its documents and their tokens, BOS and EOS included."""

    files: list[str] = field(default_factory=list)
    documents: int = 0
    tokens: int = 0

    def add_file(self, name: str) -> None:
        if name not in self.files:
            self.files.append(name)


@dataclass
class SplitStats(ReadStats):
    """What one domain contributed to one split: ``tokens`` in ``samples``, and the ``dropped_tokens`` after them."""

    samples: int = 0
    dropped_tokens: int = 0


@dataclass
class _TokenizedChunk:
    """Documents of consecutive lines of one input file, each BOS + tokens + EOS, concatenated."""

    file_name: str
    tokens: np.ndarray
    document_ends: np.ndarray  # end offset of each document in ``tokens``
    skipped: list[str]  # 'FILE:LINE: reason' for each record that was skipped

    def documents_from(self, first: int) -> _TokenizedChunk:
        """The chunk of the documents from the ``first``-th on (without the skipped records)."""
        start = int(self.document_ends[first - 1]) if first else 0
        return _TokenizedChunk(self.file_name, self.tokens[start:], self.document_ends[first:] - start, [])


class _ChunkTokenizer:
    """Parses JSON lines and tokenises their texts; one per worker process."""

    def __init__(self, tokenizer: Tokenizer, bos: list[int], eos: list[int], dtype: np.dtype) -> None:
        self.tokenizer = tokenizer
        self.bos = bos
        self.eos = eos
        self.dtype = dtype

    def __call__(self, file_name: str, lines: bytes, first_line_number: int) -> _TokenizedChunk:
        texts: list[str] = []
        skipped: list[str] = []
        for line_number, line in enumerate(lines.split(b'\n'), first_line_number):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                skipped.append(f'{file_name}:{line_number}: malformed JSON')
                continue
            text = record.get('text') if isinstance(record, dict) else None
            if not isinstance(text, str):
                skipped.append(f'{file_name}:{line_number}: no "text" string')
                continue
            texts.append(text)
        token_ids = [encoding.ids for encoding in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64) + len(self.bos) + len(self.eos)
        documents = ((self.bos, ids, self.eos) for ids in token_ids)
        tokens = np.fromiter(
            itertools.chain.from_iterable(itertools.chain.from_iterable(documents)), self.dtype, int(lengths.sum())
        )
        return _TokenizedChunk(file_name, tokens, np.cumsum(lengths), skipped)


_worker_chunk_tokenizer: _ChunkTokenizer | None = None


def _start_worker(chunk_tokenizer: _ChunkTokenizer) -> None:
    global _worker_chunk_tokenizer
    # Forked workers inherit the parent's handlers; Composer's turn SIGTERM into SystemExit, which can leave a
    # worker hanging on exit and Pool.terminate() waiting for it forever. Ctrl-C is the main process's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one core per worker: --workers is the whole budget
    _worker_chunk_tokenizer = chunk_tokenizer


def _tokenize_in_worker(file_name: str, lines: bytes, first_line_number: int) -> _TokenizedChunk:
    return _worker_chunk_tokenizer(file_name, lines, first_line_number)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a ``.zst`` file's frames; a file that ends inside a frame raises ``EOFError``, as
    ``gzip`` does (zstandard's ``stream_reader`` ends there without a word)."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard  # only needed for .zst inputs

        self.raw = raw
        self.decompressor = zstandard.ZstdDecompressor()
        self.frame: zstandard.ZstdDecompressionObj | None = None  # the frame being read; None between frames
        self.compressed = b''  # read from the file, not yet decompressed
        self.decompressed = memoryview(b'')

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.decompressed:
            if not self.compressed:
                self.compressed = self.raw.read(CHUNK_BYTES)
                if not self.compressed:
                    if self.frame is not None:
                        raise EOFError('compressed file ended inside a zstd frame')
                    return 0
            self.frame = self.frame or self.decompressor.decompressobj()
            self.decompressed = memoryview(self.frame.decompress(self.compressed))
            self.compressed = b''
            if self.frame.eof:
                self.compressed, self.frame = self.frame.unused_data, None
        size = min(len(buffer), len(self.decompressed))
        buffer[:size] = self.decompressed[:size]
        self.decompressed = self.decompressed[size:]
        return size


def _open_decompressed(path: Path, raw: BinaryIO) -> BinaryIO:
    if path.name.endswith('.gz'):
        return gzip.GzipFile(fileobj=raw)
    if path.name.endswith('.zst'):
        return io.BufferedReader(_ZstdFrames(raw))
    return raw


def _damaged_input_errors(path: Path) -> tuple[type[Exception], ...]:
    """What reading a truncated or damaged input file raises."""
    if path.name.endswith('.zst'):
        import zstandard

        return EOFError, OSError, zstandard.ZstdError
    return EOFError, OSError, zlib.error


def _read_line_chunks(path: Path, progress: tqdm) -> Iterator[tuple[bytes, int]]:
    """Yield (about ``CHUNK_BYTES`` of whole lines, number of their first line); advance ``progress`` by bytes read.
    A truncated or damaged compressed file is a ``ValueError`` naming it and its last whole line."""
    with open(path, 'rb') as raw, _open_decompressed(path, raw) as stream:
        first_line_number = 1
        position = 0
        while True:
            try:
                lines = stream.read(CHUNK_BYTES)
                lines += stream.readline()
            except _damaged_input_errors(path) as error:
                raise _damaged_input_error(path, error) from None
            if not lines:
                return
            progress.update(raw.tell() - position)
            position = raw.tell()
            yield lines, first_line_number
            first_line_number += lines.count(b'\n')


def _damaged_input_error(path: Path, error: Exception) -> ValueError:
    """The error for an input file that cannot be read to its end, with its last whole line (read again to find it:
    a chunk's lines are counted only once it is whole)."""
    whole_lines = 0
    with contextlib.suppress(*_damaged_input_errors(path)), open(path, 'rb') as raw:
        with _open_decompressed(path, raw) as stream:
            for line in stream:
                whole_lines += line.endswith(b'\n')
    return ValueError(f'input file {path} is truncated or damaged after line {whole_lines}: {error}')


class _SamplePacker:
    """Cuts one domain's token stream into ``seq_len`` samples and writes each to the given MDS writers."""

    def __init__(
        self, writers: Sequence[MDSWriter], domain: str, seq_len: int, dtype: np.dtype, max_samples: int | None = None
    ) -> None:
        self.writers = writers
        self.domain = domain
        self.seq_len = seq_len
        self.max_samples = max_samples
        self.samples = 0
        self.leftover = np.empty(0, dtype)

    @property
    def full(self) -> bool:
        return self.max_samples is not None and self.samples >= self.max_samples

    def add(self, tokens: np.ndarray) -> int:
        """Write the complete samples that ``tokens`` finishes; return how many of ``tokens`` were taken.

        All are taken, unless ``max_samples`` is reached: then the tokens after the last sample are not.
        """
        stream = np.concatenate((self.leftover, tokens))
        num_samples = len(stream) // self.seq_len
        if self.max_samples is not None:
            num_samples = min(num_samples, self.max_samples - self.samples)
        end = num_samples * self.seq_len
        for sample in stream[:end].reshape(num_samples, self.seq_len):
            for writer in self.writers:
                writer.write({'tokens': sample, 'domain': self.domain})
        self.samples += num_samples
        if self.full:
            taken = end - len(self.leftover)
            self.leftover = self.leftover[:0]
            return taken
        self.leftover = stream[end:]
        return len(tokens)


@dataclass(frozen=True)
class _Settings:
    seq_len: int
    eval_samples: int
    max_docs_per_domain: int | None
    dtype: np.dtype
    max_pending: int


class _DomainPreparation:
    """Writes one domain: its eval samples first, then its train samples; counts what it reads, records skipped."""

    def __init__(
        self, domain: str, paths: list[Path], pool: multiprocessing.pool.Pool, settings: _Settings, progress: tqdm
    ) -> None:
        self.domain = domain
        self.paths = paths
        self.pool = pool
        self.settings = settings
        self.progress = progress
        self.skipped: list[str] = []
        self.read = ReadStats()

    def tokenized_chunks(self) -> Iterator[tuple[int, _TokenizedChunk]]:
        """Yield (path index, chunk) for every file in order, tokenised in the worker pool."""
        pending: deque[tuple[int, multiprocessing.pool.AsyncResult]] = deque()
        for path_index, path in enumerate(self.paths):
            for lines, first_line_number in _read_line_chunks(path, self.progress):
                work = self.pool.apply_async(_tokenize_in_worker, (path.name, lines, first_line_number))
                pending.append((path_index, work))
                if len(pending) >= self.settings.max_pending:
                    yield self._collect(*pending.popleft())
        while pending:
            yield self._collect(*pending.popleft())

    def _collect(self, path_index: int, work: multiprocessing.pool.AsyncResult) -> tuple[int, _TokenizedChunk]:
        chunk = work.get()
        self.skipped += chunk.skipped
        self.read.add_file(chunk.file_name)
        self.read.documents += len(chunk.document_ends)
        self.read.tokens += len(chunk.tokens)
        return path_index, chunk

    @property
    def eval_files(self) -> int:
        """How many of the domain's first files evaluation may read: all but the last, or the only one."""
        return max(len(self.paths) - 1, 1)

    def write_eval(
        self, writers: Sequence[MDSWriter], chunks: Iterator[tuple[int, _TokenizedChunk]]
    ) -> tuple[SplitStats, Iterator[tuple[int, _TokenizedChunk]]]:
        """Write up to ``eval_samples`` samples of the first whole documents of ``chunks`` in the eval files;
        return their stats and the chunks of every document after them, for training."""
        stats = SplitStats()
        settings = self.settings
        packer = _SamplePacker(writers, self.domain, settings.seq_len, settings.dtype, settings.eval_samples)
        rest: list[tuple[int, _TokenizedChunk]] = []
        for path_index, chunk in chunks:
            if path_index >= self.eval_files:
                rest.append((path_index, chunk))
                break
            stats.add_file(chunk.file_name)
            taken = packer.add(chunk.tokens)
            if packer.full:
                documents_taken = int(np.searchsorted(chunk.document_ends, taken)) + 1
                stats.documents += documents_taken
                stats.dropped_tokens = int(chunk.document_ends[documents_taken - 1]) - taken
                rest.append((path_index, chunk.documents_from(documents_taken)))
                break
            stats.documents += len(chunk.document_ends)
        if not packer.full:
            stats.dropped_tokens = len(packer.leftover)
        stats.samples = packer.samples
        stats.tokens = packer.samples * settings.seq_len
        return stats, itertools.chain(rest, chunks)

    def write_train(self, writer: MDSWriter, chunks: Iterable[tuple[int, _TokenizedChunk]]) -> SplitStats:
        """Write the samples of ``chunks``; return their stats. At ``max_docs_per_domain`` documents it stops
        reading: the documents after them do not count as read."""
        stats = SplitStats()
        max_documents = self.settings.max_docs_per_domain
        packer = _SamplePacker([writer], self.domain, self.settings.seq_len, self.settings.dtype)
        for _, chunk in chunks:
            tokens, document_ends = chunk.tokens, chunk.document_ends
            if max_documents is not None:
                document_ends = document_ends[: max_documents - stats.documents]
                tokens = tokens[: document_ends[-1] if len(document_ends) else 0]
                self.read.documents -= len(chunk.document_ends) - len(document_ends)
                self.read.tokens -= len(chunk.tokens) - len(tokens)
            if len(document_ends):
                stats.add_file(chunk.file_name)
            stats.documents += len(document_ends)
            packer.add(tokens)
            if stats.documents == max_documents:
                break
        stats.samples = packer.samples
        stats.tokens = packer.samples * self.settings.seq_len
        stats.dropped_tokens = len(packer.leftover)
        return stats


def _find_domains(input_dir: Path, domains: Sequence[str] | None) -> dict[str, list[Path]]:
    """Map each domain to its input files in name order."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f'input folder {input_dir} does not exist')
    if domains is None:
        domains = sorted(path.name for path in input_dir.iterdir() if path.is_dir() and not path.name.startswith('.'))
        if not domains:
            raise FileNotFoundError(f'input folder {input_dir} has no domain folders')
    if len(set(domains)) != len(domains):
        raise ValueError(f'domains are listed more than once: {list(domains)}')
    files_by_domain = {}
    for domain in domains:
        if domain == EVAL_MERGE:
            raise ValueError(f'domain name {EVAL_MERGE!r} is reserved for the merged eval split')
        folder = input_dir / domain
        if not folder.is_dir():
            raise FileNotFoundError(f'domain folder {folder} does not exist')
        files = sorted(path for path in folder.iterdir() if path.is_file() and path.name.endswith(INPUT_SUFFIXES))
        if not files:
            patterns = ', '.join('*' + suffix for suffix in INPUT_SUFFIXES)
            raise ValueError(f'domain {domain!r} is empty: {folder} has no {patterns} files')
        files_by_domain[domain] = files
    return files_by_domain


def _check_output_dir(output_dir: Path, input_dir: Path, overwrite: bool) -> None:
    output, source = output_dir.resolve(), input_dir.resolve()
    if output == source or output in source.parents or source in output.parents:
        raise ValueError(f'output folder {output_dir} and input folder {input_dir} must not contain each other')
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f'output folder {output_dir} is a file')
    check_output_dir(output_dir, overwrite)


def _check_counts(seq_len: int, eval_samples: int, workers: int, max_docs_per_domain: int | None) -> None:
    for name, value, minimum in (
        ('seq_len', seq_len, 2),
        ('eval_samples', eval_samples, 0),
        ('workers', workers, 1),
        ('max_docs_per_domain', 1 if max_docs_per_domain is None else max_docs_per_domain, 1),
    ):
        if value < minimum:
            raise ParameterError(name, f'must be at least {minimum}, got {value}')


def prepare_data(
    input_dir: str | Path,
    output_dir: str | Path,
    tokenizer: str | Path,
    seq_len: int,
    eval_samples: int = DEFAULT_EVAL_SAMPLES,
    workers: int | None = None,
    overwrite: bool = False,
    domains: Sequence[str] | None = None,
    max_docs_per_domain: int | None = None,
) -> dict[str, Any]:
    """Tokenise each domain of ``input_dir`` into MDS shards under ``output_dir``; return the manifest.

    Args:
        input_dir: one folder per domain of ``*.jsonl``, ``*.jsonl.gz`` or ``*.jsonl.zst`` files.
        output_dir: where ``train/``, ``eval/`` and ``manifest.json`` go; written only when everything succeeded.
        tokenizer: a local Hugging Face tokenizer folder or a SentencePiece ``tokenizer.model`` file.
        seq_len: tokens per sample.
        eval_samples: eval samples per domain (0: no eval split).
        workers: tokenising processes (default: the CPUs this process may use).
        overwrite: replace a non-empty ``output_dir``.
        domains: the domain folders to use, in this order (default: all, sorted by name).
        max_docs_per_domain: at most this many documents of each domain go into training.
    """
    input_dir, output_dir, tokenizer_path = Path(input_dir), Path(output_dir), Path(tokenizer)
    workers = workers or len(os.sched_getaffinity(0))
    _check_counts(seq_len, eval_samples, workers, max_docs_per_domain)
    files_by_domain = _find_domains(input_dir, domains)
    loaded_tokenizer = load_tokenizer(tokenizer_path)
    _check_output_dir(output_dir, input_dir, overwrite)

    dtype = np.dtype(np.uint16 if len(loaded_tokenizer) <= 1 << 16 else np.uint32)
    bos = [loaded_tokenizer.bos_token_id] if loaded_tokenizer.bos_token_id is not None else []
    eos = [loaded_tokenizer.eos_token_id] if loaded_tokenizer.eos_token_id is not None else []
    settings = _Settings(seq_len, eval_samples, max_docs_per_domain, dtype, max_pending=2 * workers + 2)
    manifest: dict[str, Any] = {
        'seq_len': seq_len,
        'token_dtype': dtype.name,
        'tokenizer': {
            'path': str(tokenizer_path.resolve()),
            'vocab_size': len(loaded_tokenizer),
            'bos_token_id': loaded_tokenizer.bos_token_id,
            'eos_token_id': loaded_tokenizer.eos_token_id,
        },
        'document_format': ' + '.join(
            [loaded_tokenizer.bos_token] * len(bos) + ['text tokens'] + [loaded_tokenizer.eos_token] * len(eos)
        ),
        'remainder': (
            'the tokens after the last full sample of each domain and split are dropped (dropped_tokens), in eval'
            ' up to the end of its last document; per domain, read.tokens = tokens + dropped_tokens of train and eval'
        ),
        'eval_samples_per_domain': eval_samples,
        'max_docs_per_domain': max_docs_per_domain,
        'domains': list(files_by_domain),
        'read': {},
        'train': {},
        'eval': {},
        'skipped_records': {},
    }

    staging = output_dir.resolve().with_name(f'.{output_dir.resolve().name}.partial')
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted run
    staging.mkdir(parents=True)
    try:
        chunk_tokenizer = _ChunkTokenizer(loaded_tokenizer.backend_tokenizer, bos, eos, dtype)
        with multiprocessing.get_context('fork').Pool(workers, _start_worker, (chunk_tokenizer,)) as pool:
            _write_domains(staging, files_by_domain, pool, settings, manifest)
        (staging / 'manifest.json').write_text(json.dumps(manifest, indent=2) + '\n')
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _write_domains(
    staging: Path,
    files_by_domain: dict[str, list[Path]],
    pool: multiprocessing.pool.Pool,
    settings: _Settings,
    manifest: dict[str, Any],
) -> None:
    """Write every domain's shards under ``staging`` and its stats into ``manifest``."""
    columns = {'tokens': f'ndarray:{settings.dtype.name}', 'domain': 'str'}
    total_bytes = sum(path.stat().st_size for paths in files_by_domain.values() for path in paths)
    bytes_done = 0
    with (
        tqdm(total=total_bytes, unit='B', unit_scale=True, desc='prepare-data', disable=None) as progress,
        ExitStack() as eval_merge_writer,
    ):
        eval_merge = (
            eval_merge_writer.enter_context(MDSWriter(out=str(staging / 'eval' / EVAL_MERGE), columns=columns))
            if settings.eval_samples
            else None
        )
        for domain, paths in files_by_domain.items():
            preparation = _DomainPreparation(domain, paths, pool, settings, progress)
            train_chunks = preparation.tokenized_chunks()
            evaluation = SplitStats()
            if settings.eval_samples:
                with MDSWriter(out=str(staging / 'eval' / domain), columns=columns) as eval_writer:
                    evaluation, train_chunks = preparation.write_eval([eval_writer, eval_merge], train_chunks)
            with MDSWriter(out=str(staging / 'train' / domain), columns=columns) as train_writer:
                train = preparation.write_train(train_writer, train_chunks)
            bytes_done += sum(path.stat().st_size for path in paths)
            progress.update(bytes_done - progress.n)
            _check_domain(domain, train, evaluation, settings, [path.name for path in paths[: preparation.eval_files]])
            skipped = preparation.skipped
            if skipped:
                log.warning('domain %r: skipped %d records, first: %s', domain, len(skipped), skipped[0])
            log.info('domain %r: %d train samples, %d eval samples', domain, train.samples, evaluation.samples)
            manifest['read'][domain] = asdict(preparation.read)
            manifest['train'][domain] = asdict(train)
            if settings.eval_samples:
                manifest['eval'][domain] = asdict(evaluation)
            manifest['skipped_records'][domain] = {'count': len(skipped), 'first': skipped[:SKIPPED_RECORDS_LISTED]}


def _check_domain(
    domain: str, train: SplitStats, evaluation: SplitStats, settings: _Settings, eval_files: list[str]
) -> None:
    if train.samples == 0:
        raise ValueError(
            f'domain {domain!r} gives no training sample of {settings.seq_len} tokens'
            f' (after {evaluation.samples} eval samples)'
        )
    if settings.eval_samples and evaluation.samples == 0:
        raise ValueError(
            f'domain {domain!r} gives no eval sample of {settings.seq_len} tokens from its eval files {eval_files}'
        )
    if evaluation.samples < settings.eval_samples:
        log.warning(
            'domain %r: %d eval samples instead of %d (its eval files %s are used up)',
            domain, evaluation.samples, settings.eval_samples, eval_files,
        )
