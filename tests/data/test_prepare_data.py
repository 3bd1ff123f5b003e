"""``llmshearing prepare-data``: exact token streams, disjoint splits, stock-loader compatibility, bad inputs."""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from streaming import LocalDataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaTokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llmshearing.cli import main
from llmshearing.data.prepare import prepare_data
from llmshearing.toy import byte_level_tokenizer
from tests.paths import SHARED

REDPAJAMA_SAMPLE = SHARED / 'data' / 'redpajama-sample'
MISTRAL_TOKENIZER = SHARED / 'tokenizers' / 'mistral-7b-v0.1' / 'tokenizer.model'
SEQ_LEN = 16


def write_jsonl(path: Path, lines: list[str]) -> None:
    """Write lines as plain, gzip or zstd JSON lines, by the file name's suffix."""
    data = ''.join(line + '\n' for line in lines).encode()
    if path.name.endswith('.gz'):
        data = gzip.compress(data, mtime=0)
    elif path.name.endswith('.zst'):
        data = zstandard.ZstdCompressor().compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


DOCUMENT_NAME = re.compile(r'<[a-z]+-\d-\d{3}>')


def documents(domain: str, file_index: int, count: int) -> list[str]:
    """Texts of different lengths that start with their name, ``<domain-file-index>``."""
    return [f'<{domain}-{file_index}-{index:03d}> ' + 'xyz ' * (index % 5) for index in range(count)]


def records(texts: list[str]) -> list[str]:
    return [json.dumps({'text': text, 'meta': {'index': index}}) for index, text in enumerate(texts)]


def token_stream(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """The documents as BOS + the tokenizer's encoding + EOS, concatenated."""
    stream = []
    for ids in tokenizer(texts, add_special_tokens=False)['input_ids']:
        stream += [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return stream


def eval_document_count(tokenizer: PreTrainedTokenizerBase, texts: list[str], tokens: int) -> int:
    """How many of the first ``texts`` evaluation takes for ``tokens`` tokens: whole documents up to the one that
    holds the last of them."""
    document_ends = np.cumsum([len(token_stream(tokenizer, [text])) for text in texts])
    return int(np.searchsorted(document_ends, tokens)) + 1


def cut(stream: list[int], seq_len: int = SEQ_LEN) -> np.ndarray:
    usable = len(stream) // seq_len * seq_len
    return np.array(stream[:usable], dtype=np.int64).reshape(-1, seq_len)


def read_samples(mds_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The ``tokens`` of every sample (int64) and their ``domain``."""
    dataset = LocalDataset(str(mds_dir))
    samples = [dataset[index] for index in range(len(dataset))]
    return np.stack([sample['tokens'].astype(np.int64) for sample in samples]), [sample['domain'] for sample in samples]


def document_names(tokenizer: PreTrainedTokenizerBase, samples: np.ndarray) -> set[str]:
    """The names of the documents whose start is in ``samples``."""
    return set(DOCUMENT_NAME.findall(tokenizer.decode(samples.reshape(-1), skip_special_tokens=True)))


@pytest.fixture(scope='module')
def byte_tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('byte-tokenizer')
    byte_level_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def corpus(tmp_path) -> dict[str, list[list[str]]]:
    """Domain ``alpha``: three files (plain, gzip, zstd); domain ``beta``: one file."""
    texts = {
        'alpha': [documents('alpha', 0, 6), documents('alpha', 1, 30), documents('alpha', 2, 25)],
        'beta': [documents('beta', 0, 40)],
    }
    for name, text in zip(('a0.jsonl', 'a1.jsonl.gz', 'a2.jsonl.zst'), texts['alpha']):
        write_jsonl(tmp_path / 'input' / 'alpha' / name, records(text))
    write_jsonl(tmp_path / 'input' / 'beta' / 'b.jsonl', records(texts['beta'][0]))
    return texts


def test_token_streams_equal_the_tokenizer_encoding(tmp_path, corpus, byte_tokenizer_dir, caplog, monkeypatch):
    monkeypatch.setattr('llmshearing.data.prepare.CHUNK_BYTES', 64)  # many chunks per file, several in flight
    tokenizer = byte_level_tokenizer()
    with caplog.at_level(logging.WARNING):
        manifest = prepare_data(
            tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=2, workers=2
        )

    # alpha: eval takes whole documents of its first file up to the end of its second sample; training the rest
    # of that file, then the other two (gzip, zstd).
    alpha_texts = corpus['alpha'][0] + corpus['alpha'][1] + corpus['alpha'][2]
    alpha_eval_documents = eval_document_count(tokenizer, alpha_texts, 2 * SEQ_LEN)
    assert alpha_eval_documents < len(corpus['alpha'][0])
    alpha_train_stream = token_stream(tokenizer, alpha_texts[alpha_eval_documents:])
    alpha_eval, alpha_eval_domains = read_samples(tmp_path / 'out' / 'eval' / 'alpha')
    alpha_train, alpha_train_domains = read_samples(tmp_path / 'out' / 'train' / 'alpha')
    np.testing.assert_array_equal(alpha_eval, cut(token_stream(tokenizer, alpha_texts)[: 2 * SEQ_LEN]))
    np.testing.assert_array_equal(alpha_train, cut(alpha_train_stream))
    assert alpha_eval_domains == ['alpha'] * 2 and alpha_train_domains == ['alpha'] * len(alpha_train)

    # beta (one file): the same split inside its only file.
    beta_texts = corpus['beta'][0]
    eval_documents = eval_document_count(tokenizer, beta_texts, 2 * SEQ_LEN)
    beta_train_stream = token_stream(tokenizer, beta_texts[eval_documents:])
    beta_eval, _ = read_samples(tmp_path / 'out' / 'eval' / 'beta')
    beta_train, _ = read_samples(tmp_path / 'out' / 'train' / 'beta')
    np.testing.assert_array_equal(beta_eval, cut(token_stream(tokenizer, beta_texts)[: 2 * SEQ_LEN]))
    np.testing.assert_array_equal(beta_train, cut(beta_train_stream))
    assert caplog.text == ''

    merged, merged_domains = read_samples(tmp_path / 'out' / 'eval' / 'eval_merge')
    np.testing.assert_array_equal(merged, np.concatenate([alpha_eval, beta_eval]))
    assert merged_domains == ['alpha', 'alpha', 'beta', 'beta']

    assert json.loads((tmp_path / 'out' / 'manifest.json').read_text()) == manifest
    assert manifest['domains'] == ['alpha', 'beta']
    assert manifest['token_dtype'] == 'uint16'
    assert manifest['tokenizer'] == {
        'path': str(byte_tokenizer_dir.resolve()), 'vocab_size': 259, 'bos_token_id': 1, 'eos_token_id': 2
    }
    assert manifest['train']['alpha'] == {
        'files': ['a0.jsonl', 'a1.jsonl.gz', 'a2.jsonl.zst'],
        'documents': 61 - alpha_eval_documents,
        'samples': len(alpha_train),
        'tokens': len(alpha_train) * SEQ_LEN,
        'dropped_tokens': len(alpha_train_stream) % SEQ_LEN,
    }
    assert manifest['eval']['beta'] == {
        'files': ['b.jsonl'],
        'documents': eval_documents,
        'samples': 2,
        'tokens': 2 * SEQ_LEN,
        'dropped_tokens': len(token_stream(tokenizer, beta_texts[:eval_documents])) - 2 * SEQ_LEN,
    }
    assert manifest['train']['beta']['documents'] == 40 - eval_documents
    assert manifest['read']['beta'] == {
        'files': ['b.jsonl'],
        'documents': 40,
        'tokens': len(token_stream(tokenizer, beta_texts)),
    }


def test_every_document_is_read_once_and_every_token_is_accounted_for(tmp_path, byte_tokenizer_dir, monkeypatch):
    """Several files per domain with malformed lines in its eval files, before and after what evaluation takes, and
    a single-file domain: the documents after the eval documents go to training, every malformed line is counted,
    and the manifest's read tokens are the tokens of every document, in samples or dropped."""
    monkeypatch.setattr('llmshearing.data.prepare.CHUNK_BYTES', 48)
    tokenizer = byte_level_tokenizer()
    texts = {
        'multi': [documents('multi', 0, 12), documents('multi', 1, 9), documents('multi', 2, 7)],
        'single': [documents('single', 0, 15)],
    }
    bad = ['{"text": "cut off', json.dumps({'title': 'no text'})]
    write_jsonl(
        tmp_path / 'input' / 'multi' / 'm0.jsonl',
        [bad[0], *records(texts['multi'][0][:6]), bad[1], *records(texts['multi'][0][6:])],
    )
    write_jsonl(tmp_path / 'input' / 'multi' / 'm1.jsonl.gz', [*records(texts['multi'][1]), bad[0]])
    write_jsonl(tmp_path / 'input' / 'multi' / 'm2.jsonl', records(texts['multi'][2]))
    write_jsonl(
        tmp_path / 'input' / 'single' / 's.jsonl',
        [*records(texts['single'][0][:14]), bad[1], *records(texts['single'][0][14:])],
    )
    manifest = prepare_data(
        tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=3, workers=2
    )

    for domain in ('multi', 'single'):
        domain_texts = sum(texts[domain], [])
        eval_documents = eval_document_count(tokenizer, domain_texts, 3 * SEQ_LEN)
        evaluation, _ = read_samples(tmp_path / 'out' / 'eval' / domain)
        train, _ = read_samples(tmp_path / 'out' / 'train' / domain)
        np.testing.assert_array_equal(evaluation, cut(token_stream(tokenizer, domain_texts)[: 3 * SEQ_LEN]))
        np.testing.assert_array_equal(train, cut(token_stream(tokenizer, domain_texts[eval_documents:])))
        assert not document_names(tokenizer, evaluation) & document_names(tokenizer, train)

        read, splits = manifest['read'][domain], (manifest['train'][domain], manifest['eval'][domain])
        assert read['documents'] == len(domain_texts) == sum(split['documents'] for split in splits)
        assert read['tokens'] == len(token_stream(tokenizer, domain_texts))
        assert read['tokens'] == sum(split['tokens'] + split['dropped_tokens'] for split in splits)
    assert manifest['eval']['multi']['files'] == ['m0.jsonl']
    assert manifest['train']['multi']['files'] == ['m0.jsonl', 'm1.jsonl.gz', 'm2.jsonl']
    assert manifest['skipped_records'] == {
        'multi': {
            'count': 3,
            'first': ['m0.jsonl:1: malformed JSON', 'm0.jsonl:8: no "text" string', 'm1.jsonl.gz:10: malformed JSON'],
        },
        'single': {'count': 1, 'first': ['s.jsonl:15: no "text" string']},
    }


def byte_ids(text: str) -> list[int]:
    """The byte-level tokenizer's ids of printable ASCII without spaces, by hand: after its 3 special tokens come
    the 256 byte symbols in code-point order, which starts with '!' (33) to '~' (126), so character c is
    ord(c) - 30."""
    assert all('!' <= character <= '~' for character in text)
    return [ord(character) - 30 for character in text]


def test_sample_accounting_of_a_small_corpus_worked_out_by_hand(tmp_path, byte_tokenizer_dir):
    """Every document is BOS (1) + one token per character + EOS (2); samples of 3 tokens, 2 eval samples.

    alpha (files a0, a1; eval reads a0 only): documents of 8, 4 and 7 tokens. Eval: 1 abc, def of the first
    document, which ends after 2 more (f EOS, dropped). Train: 1 gh 2 + 1 ijklm 2 = 11 tokens, 3 samples, 2
    dropped. beta (one file, a malformed line in it): documents of 5, 2 (empty text), 4 and 7 tokens. Eval: 1 uvw 2
    and the BOS of the empty document, whose EOS is dropped. Train: 1 st 2 + 1 opqrs 2 = 11 tokens, 3 samples, 2
    dropped."""
    write_jsonl(tmp_path / 'input' / 'alpha' / 'a0.jsonl', records(['abcdef', 'gh']))
    write_jsonl(tmp_path / 'input' / 'alpha' / 'a1.jsonl', records(['ijklm']))
    write_jsonl(
        tmp_path / 'input' / 'beta' / 'b.jsonl', records(['uvw', '']) + ['{"text": 3}'] + records(['st', 'opqrs'])
    )
    manifest = prepare_data(tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, 3, eval_samples=2, workers=1)

    bos, eos = 1, 2
    expected_samples = {
        ('eval', 'alpha'): [[bos, *byte_ids('ab')], byte_ids('cde')],
        ('train', 'alpha'): [[bos, *byte_ids('gh')], [eos, bos, *byte_ids('i')], byte_ids('jkl')],
        ('eval', 'beta'): [[bos, *byte_ids('uv')], [*byte_ids('w'), eos, bos]],
        ('train', 'beta'): [[bos, *byte_ids('st')], [eos, bos, *byte_ids('o')], byte_ids('pqr')],
    }
    for (split, domain), samples in expected_samples.items():
        tokens, domains = read_samples(tmp_path / 'out' / split / domain)
        assert tokens.tolist() == samples, (split, domain)
        assert domains == [domain] * len(samples)
    merged, merged_domains = read_samples(tmp_path / 'out' / 'eval' / 'eval_merge')
    assert merged.tolist() == expected_samples['eval', 'alpha'] + expected_samples['eval', 'beta']
    assert merged_domains == ['alpha', 'alpha', 'beta', 'beta']

    assert manifest['read'] == {
        'alpha': {'files': ['a0.jsonl', 'a1.jsonl'], 'documents': 3, 'tokens': 8 + 4 + 7},
        'beta': {'files': ['b.jsonl'], 'documents': 4, 'tokens': 5 + 2 + 4 + 7},
    }
    assert manifest['eval'] == {
        'alpha': {'files': ['a0.jsonl'], 'documents': 1, 'samples': 2, 'tokens': 6, 'dropped_tokens': 2},
        'beta': {'files': ['b.jsonl'], 'documents': 2, 'samples': 2, 'tokens': 6, 'dropped_tokens': 1},
    }
    assert manifest['train'] == {
        'alpha': {'files': ['a0.jsonl', 'a1.jsonl'], 'documents': 2, 'samples': 3, 'tokens': 9, 'dropped_tokens': 2},
        'beta': {'files': ['b.jsonl'], 'documents': 2, 'samples': 3, 'tokens': 9, 'dropped_tokens': 2},
    }
    assert manifest['skipped_records'] == {
        'alpha': {'count': 0, 'first': []},
        'beta': {'count': 1, 'first': ['b.jsonl:3: no "text" string']},
    }


def test_eval_never_reads_the_last_file(tmp_path, corpus, byte_tokenizer_dir, caplog):
    tokenizer = byte_level_tokenizer()
    with caplog.at_level(logging.WARNING):
        manifest = prepare_data(
            tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=1000, workers=2,
            domains=['alpha'],
        )
    evaluation, _ = read_samples(tmp_path / 'out' / 'eval' / 'alpha')
    train, _ = read_samples(tmp_path / 'out' / 'train' / 'alpha')
    np.testing.assert_array_equal(evaluation, cut(token_stream(tokenizer, corpus['alpha'][0] + corpus['alpha'][1])))
    np.testing.assert_array_equal(train, cut(token_stream(tokenizer, corpus['alpha'][2])))
    assert manifest['eval']['alpha']['files'] == ['a0.jsonl', 'a1.jsonl.gz']
    assert (
        f"domain 'alpha': {len(evaluation)} eval samples instead of 1000"
        " (its eval files ['a0.jsonl', 'a1.jsonl.gz'] are used up)"
    ) in caplog.text


def test_eval_and_train_documents_are_disjoint(tmp_path, corpus, byte_tokenizer_dir):
    tokenizer = byte_level_tokenizer()
    prepare_data(tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=3, workers=1)
    for domain in ('alpha', 'beta'):
        eval_names = document_names(tokenizer, read_samples(tmp_path / 'out' / 'eval' / domain)[0])
        train_names = document_names(tokenizer, read_samples(tmp_path / 'out' / 'train' / domain)[0])
        assert eval_names and train_names
        assert not eval_names & train_names


def test_output_does_not_depend_on_the_number_of_workers(tmp_path, corpus, byte_tokenizer_dir, monkeypatch):
    monkeypatch.setattr('llmshearing.data.prepare.CHUNK_BYTES', 64)
    outputs = [tmp_path / 'out1', tmp_path / 'out2']
    for workers, output in zip((1, 2), outputs):
        prepare_data(tmp_path / 'input', output, byte_tokenizer_dir, SEQ_LEN, eval_samples=2, workers=workers)
    files = [sorted(path.relative_to(output) for path in output.rglob('*') if path.is_file()) for output in outputs]
    assert files[0] == files[1]
    for name in files[0]:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name


def test_max_docs_per_domain_caps_training_documents(tmp_path, corpus, byte_tokenizer_dir):
    manifest = prepare_data(
        tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=0, workers=1,
        domains=['alpha'], max_docs_per_domain=33,
    )
    train, _ = read_samples(tmp_path / 'out' / 'train' / 'alpha')
    texts = corpus['alpha'][0] + corpus['alpha'][1] + corpus['alpha'][2]
    np.testing.assert_array_equal(train, cut(token_stream(byte_level_tokenizer(), texts[:33])))
    assert manifest['train']['alpha']['documents'] == 33
    assert manifest['train']['alpha']['files'] == ['a0.jsonl', 'a1.jsonl.gz']
    assert manifest['read']['alpha']['documents'] == 33
    assert manifest['read']['alpha']['tokens'] == len(token_stream(byte_level_tokenizer(), texts[:33]))
    assert manifest['eval'] == {} and not (tmp_path / 'out' / 'eval').exists()


def test_llm_foundry_text_loader_reads_the_shards(tmp_path, corpus, byte_tokenizer_dir):
    from llmfoundry.data.text_data import build_text_dataloader

    prepare_data(tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=1, workers=1)
    expected, _ = read_samples(tmp_path / 'out' / 'train' / 'alpha')
    loader = build_text_dataloader(
        tokenizer=byte_level_tokenizer(),
        device_batch_size=4,
        dataset={'local': str(tmp_path / 'out' / 'train' / 'alpha'), 'max_seq_len': SEQ_LEN, 'shuffle': False},
        drop_last=False,
        num_workers=0,
        prefetch_factor=None,
        persistent_workers=False,
    ).dataloader
    batch = next(iter(loader))
    assert batch['input_ids'].dtype == torch.int64
    np.testing.assert_array_equal(batch['input_ids'].numpy(), expected[:4])


def test_malformed_records_are_skipped_counted_and_reported(tmp_path, byte_tokenizer_dir, caplog, monkeypatch):
    monkeypatch.setattr('llmshearing.data.prepare.CHUNK_BYTES', 20)  # line numbers must hold across chunks
    lines = [
        json.dumps({'text': 'first good document'}),
        '{"text": "broken',
        json.dumps({'title': 'no text here'}),
        '',
        json.dumps(['not', 'a', 'record']),
        json.dumps({'text': None}),
        json.dumps({'text': 'second good document, a little longer'}),
    ]
    write_jsonl(tmp_path / 'input' / 'only' / 'x.jsonl', lines)
    with caplog.at_level(logging.WARNING):
        manifest = prepare_data(
            tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=0, workers=1
        )
    assert manifest['skipped_records'] == {
        'only': {
            'count': 4,
            'first': [
                'x.jsonl:2: malformed JSON',
                'x.jsonl:3: no "text" string',
                'x.jsonl:5: no "text" string',
                'x.jsonl:6: no "text" string',
            ],
        }
    }
    assert "domain 'only': skipped 4 records, first: x.jsonl:2: malformed JSON" in caplog.text
    train, _ = read_samples(tmp_path / 'out' / 'train' / 'only')
    good = ['first good document', 'second good document, a little longer']
    np.testing.assert_array_equal(train, cut(token_stream(byte_level_tokenizer(), good)))


def test_vocabulary_beyond_uint16_gives_uint32_tokens(tmp_path):
    vocab = {'<s>': 0, '</s>': 1} | {f'w{index}': index + 2 for index in range(70_000)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token='</s>'))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token='<s>', eos_token='</s>')
    tokenizer.save_pretrained(tmp_path / 'tokenizer')
    write_jsonl(tmp_path / 'input' / 'big' / 'x.jsonl', records(['w69999 w65535 w3', 'w70 w69998 w0 w1 w2 w3 w4 w5']))
    manifest = prepare_data(tmp_path / 'input', tmp_path / 'out', tmp_path / 'tokenizer', 4, eval_samples=0, workers=1)
    assert manifest['token_dtype'] == 'uint32'
    train, _ = read_samples(tmp_path / 'out' / 'train' / 'big')
    np.testing.assert_array_equal(train, [[0, 70001, 65537, 5], [1, 0, 72, 70000], [2, 3, 4, 5]])
    assert LocalDataset(str(tmp_path / 'out' / 'train' / 'big'))[0]['tokens'].dtype == np.uint32


@pytest.mark.parametrize(
    ('change', 'error', 'message'),
    [
        ('missing_input', FileNotFoundError, 'input folder {input} does not exist'),
        ('missing_domain', FileNotFoundError, 'domain folder {input}/gamma does not exist'),
        (
            'empty_domain',
            ValueError,
            "domain 'empty' is empty: {input}/empty has no *.jsonl, *.jsonl.gz, *.jsonl.zst files",
        ),
        ('no_valid_record', ValueError, "domain 'broken' gives no training sample of 16 tokens (after 0 eval samples)"),
        ('missing_tokenizer', FileNotFoundError, 'tokenizer {tmp}/nowhere/tokenizer.model does not exist'),
        ('broken_tokenizer', ValueError, 'tokenizer {tmp}/garbage.model cannot be loaded'),
        ('seq_len', ValueError, 'seq_len must be at least 2, got 1'),
        ('eval_merge_domain', ValueError, "domain name 'eval_merge' is reserved for the merged eval split"),
    ],
)
def test_bad_input_names_the_problem_and_writes_nothing(tmp_path, corpus, byte_tokenizer_dir, change, error, message):
    arguments = dict(
        input_dir=tmp_path / 'input', output_dir=tmp_path / 'out', tokenizer=byte_tokenizer_dir, seq_len=SEQ_LEN,
        eval_samples=0, workers=1,
    )
    if change == 'missing_input':
        arguments['input_dir'] = tmp_path / 'absent'
    elif change == 'missing_domain':
        arguments['domains'] = ['alpha', 'gamma']
    elif change == 'empty_domain':
        (tmp_path / 'input' / 'empty').mkdir()
        (tmp_path / 'input' / 'empty' / 'notes.txt').write_text('not data')
    elif change == 'no_valid_record':
        write_jsonl(tmp_path / 'input' / 'broken' / 'x.jsonl', ['{oops', '{"no": "text"}'])
    elif change == 'missing_tokenizer':
        arguments['tokenizer'] = tmp_path / 'nowhere' / 'tokenizer.model'
    elif change == 'broken_tokenizer':
        (tmp_path / 'garbage.model').write_bytes(b'not a sentencepiece model')
        arguments['tokenizer'] = tmp_path / 'garbage.model'
    elif change == 'seq_len':
        arguments['seq_len'] = 1
    elif change == 'eval_merge_domain':
        arguments['domains'] = ['eval_merge']
    expected = message.format(input=tmp_path / ('absent' if change == 'missing_input' else 'input'), tmp=tmp_path)
    with pytest.raises(error) as raised:
        prepare_data(**arguments)
    assert str(raised.value).startswith(expected)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ['input'] + (['garbage.model'] if change == 'broken_tokenizer' else [])
    )


def test_existing_output_is_kept_without_overwrite(tmp_path, corpus, byte_tokenizer_dir):
    output = tmp_path / 'out'
    output.mkdir()
    (output / 'precious.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match=f'output folder {output} is not empty; pass overwrite=True'):
        prepare_data(tmp_path / 'input', output, byte_tokenizer_dir, SEQ_LEN, eval_samples=0, workers=1)
    assert [path.name for path in output.iterdir()] == ['precious.txt']

    manifest = prepare_data(
        tmp_path / 'input', output, byte_tokenizer_dir, SEQ_LEN, eval_samples=0, workers=1, overwrite=True
    )
    assert sorted(path.name for path in output.iterdir()) == ['manifest.json', 'train']
    assert manifest['domains'] == ['alpha', 'beta']
    assert sorted(path.name for path in tmp_path.iterdir()) == ['input', 'out']


def test_command_line(tmp_path, corpus, byte_tokenizer_dir, capsys):
    command = [
        'prepare-data', str(tmp_path / 'input'), str(tmp_path / 'out'), '--tokenizer', str(byte_tokenizer_dir),
        '--seq-len', '16', '--eval-samples', '1', '--workers', '1', '--domains', 'beta',
    ]
    assert main(command) == 0
    manifest = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
    assert manifest['domains'] == ['beta'] and manifest['eval']['beta']['samples'] == 1

    assert main(command) == 2
    assert capsys.readouterr().err == (
        f'llmshearing prepare-data: error: output folder {tmp_path / "out"} is not empty;'
        ' pass --overwrite to replace its files\n'
    )


@pytest.mark.skipif(
    not (REDPAJAMA_SAMPLE.is_dir() and MISTRAL_TOKENIZER.is_file()),
    reason='needs ../shared/data/redpajama-sample and ../shared/tokenizers/mistral-7b-v0.1',
)
def test_redpajama_sample_with_the_mistral_tokenizer(tmp_path):
    seq_len = 512
    manifest = prepare_data(
        REDPAJAMA_SAMPLE, tmp_path / 'out', MISTRAL_TOKENIZER, seq_len,
        eval_samples=4, workers=2, domains=['cc', 'wiki'],
    )
    tokenizer = LlamaTokenizerFast(vocab_file=str(MISTRAL_TOKENIZER), legacy=False)
    assert manifest['token_dtype'] == 'uint16' and manifest['tokenizer']['vocab_size'] == 32000
    for domain in ('cc', 'wiki'):
        files = sorted((REDPAJAMA_SAMPLE / domain).glob('*.jsonl'))
        texts = [json.loads(line)['text'] for path in files for line in path.read_text().splitlines()]
        eval_documents = eval_document_count(tokenizer, texts, 4 * seq_len)
        evaluation, _ = read_samples(tmp_path / 'out' / 'eval' / domain)
        train, _ = read_samples(tmp_path / 'out' / 'train' / domain)
        np.testing.assert_array_equal(evaluation, cut(token_stream(tokenizer, texts)[: 4 * seq_len], seq_len))
        np.testing.assert_array_equal(train, cut(token_stream(tokenizer, texts[eval_documents:]), seq_len))
        assert manifest['eval'][domain]['files'] == [files[0].name]
        assert manifest['train'][domain]['files'] == [path.name for path in files]
        assert manifest['read'][domain]['tokens'] == len(token_stream(tokenizer, texts))


def test_a_truncated_gzip_file_is_named_with_its_last_whole_line(tmp_path, corpus, byte_tokenizer_dir):
    path = tmp_path / 'input' / 'alpha' / 'a1.jsonl.gz'
    whole = gzip.compress(''.join(line + '\n' for line in records(documents('long', 0, 2000))).encode(), mtime=0)
    truncated = whole[: len(whole) // 2]
    path.write_bytes(truncated)
    whole_lines = zlib.decompressobj(wbits=31).decompress(truncated).count(b'\n')  # what a reader could recover
    assert 0 < whole_lines < 2000
    with pytest.raises(ValueError) as raised:
        prepare_data(tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=0, workers=1)
    assert str(raised.value) == (
        f'input file {path} is truncated or damaged after line {whole_lines}: '
        'Compressed file ended before the end-of-stream marker was reached'
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ['input']


def test_a_truncated_zstd_file_is_named_with_its_last_whole_line(tmp_path, corpus, byte_tokenizer_dir):
    path = tmp_path / 'input' / 'alpha' / 'a2.jsonl.zst'
    text = ''.join(line + '\n' for line in records(documents('z', 0, 20000)))
    whole = zstandard.ZstdCompressor().compress(text.encode())
    truncated = whole[: len(whole) // 2]
    path.write_bytes(truncated)
    whole_lines = zstandard.ZstdDecompressor().decompressobj().decompress(truncated).count(b'\n')
    assert 0 < whole_lines < 20000
    with pytest.raises(ValueError) as raised:
        prepare_data(tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=0, workers=1)
    assert str(raised.value) == (
        f'input file {path} is truncated or damaged after line {whole_lines}: compressed file ended inside a zstd frame'
    )


def test_a_damaged_zstd_file_is_named(tmp_path, corpus, byte_tokenizer_dir):
    path = tmp_path / 'input' / 'alpha' / 'a2.jsonl.zst'
    path.write_bytes(b'not zstd at all')
    with pytest.raises(ValueError) as raised:
        prepare_data(tmp_path / 'input', tmp_path / 'out', byte_tokenizer_dir, SEQ_LEN, eval_samples=0, workers=1)
    assert str(raised.value).startswith(f'input file {path} is truncated or damaged after line 0: ')
