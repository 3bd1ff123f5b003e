"""Mutation check of the core: named mutants, each a small change of one core module that changes a result, and
for each, whether the tests that cover it notice (``killed``) or still pass (``survived``).

    python -m scripts.mutation_check                         # every mutant, then killed / total
    python -m scripts.mutation_check --only kd-labels-unshifted doremi-no-eta
    python -m scripts.mutation_check --list                  # the table, checked against the code, nothing run

The working tree is never edited. The files of the checkout (those git tracks or would track) are copied into a
temporary folder (with ``../shared`` linked beside it where the checkout has one); the tests of the chosen mutants
run there once unmutated, and must pass; then each mutant's module is mutated in the copy, its tests run with
``pytest -x``, and the module is restored. Exit status 2, with a one-line error, when the table does not fit the code
(a snippet not exactly once in its module, a mutant that does not compile, a test that is not in its file, an
unknown name) or the unmutated tests fail; otherwise 0, whatever the mutants' results.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmshearing.checks import ParameterError, check_new_file
from llmshearing.evaluation.responses import write_json
from llmshearing.tables import markdown_table

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PYTEST = ('-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', '-m', 'not slow')
DEFAULT_TIMEOUT_S = 300
KILLED, SURVIVED, TIMED_OUT = 'killed', 'survived', 'timed out'
FAILED_STATUSES = (1, 2)
"""pytest's exit statuses of tests that fail (1) or cannot be collected (2, e.g. a mutant that breaks an import)."""
TAIL_LINES = 20


@dataclass(frozen=True)
class Mutant:
    """A change of ``module`` (a path from the repository root): ``original``, which must occur exactly once in it,
    becomes ``replacement``. ``tests`` are the pytest node ids (a file, or ``file::test``) that cover it."""

    name: str
    module: str
    original: str
    replacement: str
    tests: tuple[str, ...]


def _tests(path: str, *names: str) -> tuple[str, ...]:
    """Node ids of the tests ``names`` of one test file (the whole file without names)."""
    return tuple(f'{path}::{name}' for name in names) if names else (path,)


HARD_CONCRETE = 'llmshearing/pruning/hard_concrete.py'
L0_MODULE = 'llmshearing/pruning/l0_module.py'
LLAMA_LAYOUT = 'llmshearing/pruning/llama_layout.py'
LOSS = 'llmshearing/distillation/loss.py'
DYNAMIC_LOADING = 'llmshearing/callbacks/dynamic_loading.py'
DYNAMIC_DATASET = 'llmshearing/data/dynamic_dataset.py'
PREPARE = 'llmshearing/data/prepare.py'
IMPORTANCE = 'llmshearing/pruning/importance.py'
HARNESS = 'llmshearing/evaluation/harness.py'

L0_TESTS = _tests('tests/pruning/test_l0_module.py') + _tests(
    'tests/pruning/test_shearing_algorithm.py', 'test_loss_is_split_into_language_model_and_lagrangian',
    'test_the_lagrangian_drives_every_row_to_its_target_over_a_run',
) + _tests('tests/pruning/test_eval_shape_and_sparsity_runs.py')
EXPECTED_PARAMS_TESTS = _tests('tests/pruning/test_expected_params.py')
EQUIVALENCE_TESTS = _tests('tests/pruning/test_pruning_equivalence.py')
MASK_INIT_TESTS = _tests(
    'tests/pruning/test_mask_init.py', 'test_log_alphas_are_positive_exactly_for_the_top_scores_and_keep_their_order',
)
KD_TESTS = _tests(
    'tests/distillation/test_distillation.py',
    'test_kd_loss_equals_kl_div_with_ignored_positions',
    'test_kd_loss_without_labels_averages_every_position_and_keeps_the_logits_dtype',
)
DISTILLATION_TESTS = _tests('tests/distillation/test_distillation.py')
DOREMI_TESTS = _tests(
    'tests/callbacks/test_dynamic_loading.py',
    'test_doremi_update_equals_the_hand_computation',
    'test_raw_excess_lets_a_domain_below_its_reference_lose_weight_as_the_original_code_does',
    'test_doremi_update_without_max_step_is_the_papers_update_bit_for_bit',
    'test_max_step_centres_and_clips_the_step_when_it_binds',
    'test_max_step_that_does_not_bind_leaves_the_update_unchanged',
    'test_doremi_update_keeps_proportions_when_no_domain_lags_and_revives_a_domain_at_zero',
)
CALLBACK_TESTS = _tests(
    'tests/callbacks/test_dynamic_loading.py',
    'test_domain_loss_sums_equal_the_cross_entropy_of_each_domains_tokens',
    'test_each_evaluation_updates_the_training_proportions_as_computed_by_hand',
    'test_the_callback_bounds_its_update_by_max_step',
    'test_a_change_applies_after_the_batches_the_workers_may_have_prepared',
    'test_a_real_run_updates_the_proportions_by_the_rule_from_the_models_own_eval_losses',
    'test_a_real_run_clips_the_excess_smooths_and_bounds_the_step_as_documented',
)
DYNAMIC_DATASET_TESTS = _tests(
    'tests/data/test_dynamic_dataset.py',
    'test_domain_frequencies_follow_the_proportions_before_and_after_a_change',
    'test_each_pass_over_a_domain_reads_every_sample_once_and_a_new_pass_is_reshuffled',
    'test_set_proportions_without_samples_seen_applies_after_the_batches_yielded',
)
PREPARE_TESTS = _tests(
    'tests/data/test_prepare_data.py',
    'test_token_streams_equal_the_tokenizer_encoding',
    'test_every_document_is_read_once_and_every_token_is_accounted_for',
    'test_eval_never_reads_the_last_file',
    'test_eval_and_train_documents_are_disjoint',
    'test_max_docs_per_domain_caps_training_documents',
    'test_sample_accounting_of_a_small_corpus_worked_out_by_hand',
)
IMPORTANCE_TESTS = _tests(
    'tests/pruning/test_importance.py',
    'test_pruned_model_has_exactly_the_target_shape',
    'test_a_zeroed_structure_is_pruned_first',
    'test_a_layer_that_adds_nothing_to_the_residual_stream_is_dropped_first_by_activation_importance',
)
EVALUATE_TESTS = _tests(
    'tests/evaluation/test_evaluate.py',
    'test_outputs_and_rows_match_an_independent_computation',
    'test_acc_and_acc_norm_are_those_of_direct_log_likelihoods',
    'test_a_few_shot_prompt_is_the_other_rows_question_and_gold_answer_before_the_question',
)

MUTANTS = (
    # Hard-concrete gates.
    Mutant('hc-temperature', HARD_CONCRETE, 'TEMPERATURE = 2.0 / 3.0', 'TEMPERATURE = 1.0 / 3.0', L0_TESTS),
    Mutant('hc-log-alpha-max', HARD_CONCRETE, 'LOG_ALPHA_MAX = math.log(1e2)', 'LOG_ALPHA_MAX = math.log(1e3)',
           L0_TESTS),
    Mutant('hc-sample-log-alpha-sign', HARD_CONCRETE, 'torch.log1p(-u) + log_alpha', 'torch.log1p(-u) - log_alpha',
           L0_TESTS),
    Mutant('hc-sample-unstretched', HARD_CONCRETE, 'return (soft * (LIMIT_RIGHT - LIMIT_LEFT) + LIMIT_LEFT).clamp',
           'return soft.clamp', L0_TESTS),
    Mutant('hc-keep-probability-sign', HARD_CONCRETE, 'log_alpha - TEMPERATURE * math.log(',
           'log_alpha + TEMPERATURE * math.log(', L0_TESTS),
    Mutant('hc-deterministic-bottom-k', HARD_CONCRETE, 'score.topk(num_kept, dim=-1)',
           'score.topk(num_kept, dim=-1, largest=False)', L0_TESTS),
    Mutant('hc-deterministic-unscaled', HARD_CONCRETE, 'return score * torch.zeros_like(score).scatter_(',
           'return torch.zeros_like(score).scatter_(', L0_TESTS),
    Mutant('hc-sparsity-over-all-groups', HARD_CONCRETE, 'self.keep_probability().mean(-1)',
           'self.keep_probability().mean()', L0_TESTS),
    Mutant('hc-expected-count-floored', HARD_CONCRETE, 'round(mean_kept)', 'int(mean_kept)', L0_TESTS),
    Mutant('hc-score-init-one-more-kept', HARD_CONCRETE, '(num_kept - 0.5 - ranks.float())',
           '(num_kept + 0.5 - ranks.float())', MASK_INIT_TESTS),
    # The L0 module: the Lagrangian, the expected size, the deterministic masks.
    Mutant('l0-gap-sign', L0_MODULE, 'gap = expected[name] - target[name]', 'gap = target[name] - expected[name]',
           L0_TESTS),
    Mutant('l0-multipliers-descend', L0_MODULE, 'lambda_1, lambda_2 = _ReverseGradient.apply(lambdas)',
           'lambda_1, lambda_2 = lambdas', L0_TESTS),
    Mutant('l0-lagrangian-of-mean-gap', L0_MODULE, '(lambda_1 * gap + lambda_2 * gap * gap).mean()',
           '(lambda_1 * gap.mean() + lambda_2 * gap.mean() ** 2)', L0_TESTS),
    Mutant('l0-target-is-kept-fraction', L0_MODULE, 'progress * (1.0 - mask.num_kept / mask.group_size)',
           'progress * (mask.num_kept / mask.group_size)', L0_TESTS),
    Mutant('l0-eval-ignores-expected-shape', L0_MODULE,
           'mask.deterministic(None if target_shape else mask.expected_num_kept_per_group())',
           'mask.deterministic(None)', L0_TESTS),
    Mutant('l0-params-one-kv-projection', L0_MODULE, '(2 * query_heads + 2 * kv_heads)',
           '(2 * query_heads + kv_heads)', EXPECTED_PARAMS_TESTS),
    Mutant('l0-params-ignore-layer-gates', L0_MODULE, '(layer * (attention + mlp + norms)).sum()',
           '(attention + mlp + norms).sum()', EXPECTED_PARAMS_TESTS),
    Mutant('l0-query-heads-ignore-kv-gates', L0_MODULE, '(within_group * group).reshape(',
           'within_group.reshape(', EQUIVALENCE_TESTS),
    # Masked forward and export: folding the masks into the weights.
    Mutant('fold-row-scale-on-columns', LLAMA_LAYOUT, 'weight = weight * row_scale.float().unsqueeze(-1)',
           'weight = weight * row_scale.float()', EQUIVALENCE_TESTS),
    Mutant('fold-skips-query-head-mask', LLAMA_LAYOUT, 'row_scale=residual_scale, col_scale=query_scale',
           'row_scale=residual_scale, col_scale=None', EQUIVALENCE_TESTS),
    Mutant('fold-skips-layer-gate', LLAMA_LAYOUT, 'residual_scale = residual_scale * masks.layer[index]',
           'residual_scale = residual_scale', EQUIVALENCE_TESTS),
    Mutant('fold-tied-norm-scaled-twice', LLAMA_LAYOUT, 'fold_hidden=not (tied and embedding_has_hidden)',
           'fold_hidden=True', EQUIVALENCE_TESTS),
    Mutant('masked-norm-over-all-dimensions', LLAMA_LAYOUT, '/ self._current.kept_hidden',
           '/ hidden_states.shape[-1]', EQUIVALENCE_TESTS),
    # Distillation.
    Mutant('kd-labels-unshifted', 'llmshearing/distillation/algorithm.py',
           'kd_loss(student_logits, teacher_logits, next_token_targets(labels),',
           'kd_loss(student_logits, teacher_logits, labels,', DISTILLATION_TESTS),
    Mutant('kd-ignored-positions-kept', LOSS, 'kept = (labels != IGNORE_INDEX).float()',
           'kept = torch.ones(labels.shape, device=labels.device)', KD_TESTS),
    Mutant('kd-temperature-not-squared', LOSS, 'kl_sum * temperature**2', 'kl_sum * temperature', KD_TESTS),
    Mutant('kd-reverse-kl', LOSS, 'kl = teacher_probs.mul_(teacher_log_probs.sub_(student_log_probs)).sum(dim=-1)',
           'kl = student_log_probs.exp().mul_(student_log_probs - teacher_log_probs).sum(dim=-1)', KD_TESTS),
    # Dynamic batch loading.
    Mutant('doremi-no-eta', DYNAMIC_LOADING, 'step = eta * excess_loss', 'step = excess_loss', DOREMI_TESTS),
    Mutant('doremi-excess-not-clipped', DYNAMIC_LOADING, 'np.maximum(excess_loss, 0.0)', 'np.abs(excess_loss)',
           DOREMI_TESTS),
    Mutant('doremi-smoothing-unweighted', DYNAMIC_LOADING, '(1 - smoothing) * weights + smoothing / len(weights)',
           'weights + smoothing / len(weights)', DOREMI_TESTS),
    Mutant('doremi-max-step-uncentred', DYNAMIC_LOADING, 'np.clip(step - step.mean(), -max_step, max_step)',
           'np.clip(step, -max_step, max_step)', DOREMI_TESTS),
    Mutant('callback-loss-over-all-tokens', DYNAMIC_LOADING, 'losses = loss_sums / token_counts',
           'losses = loss_sums / token_counts.sum()', CALLBACK_TESTS),
    Mutant('callback-token-counts-include-ignored', 'llmshearing/metrics.py',
           'token_counts = (labels != self.ignore_index).sum(dim=1)',
           'token_counts = torch.full((labels.shape[0],), labels.shape[1], device=labels.device)', CALLBACK_TESTS),
    Mutant('dataset-change-without-lookahead', DYNAMIC_DATASET,
           'ProportionChange(seen + self.lookahead_batches * self.global_batch_size, values)',
           'ProportionChange(seen, values)', CALLBACK_TESTS),
    Mutant('dataset-thresholds-shifted', DYNAMIC_DATASET, 'np.cumsum(change.proportions)[:-1]',
           'np.cumsum(change.proportions)[1:]', DYNAMIC_DATASET_TESTS),
    Mutant('dataset-draw-numbers-from-one', DYNAMIC_DATASET,
           'counts[domains] + earlier_in_batch[np.arange(len(domains)), domains] - 1',
           'counts[domains] + earlier_in_batch[np.arange(len(domains)), domains]', DYNAMIC_DATASET_TESTS),
    # prepare-data's sample accounting.
    Mutant('prepare-one-token-short', PREPARE, 'num_samples = len(stream) // self.seq_len',
           'num_samples = (len(stream) - 1) // self.seq_len', PREPARE_TESTS),
    Mutant('prepare-leftover-dropped', PREPARE, 'self.leftover = stream[end:]', 'self.leftover = stream[:0]',
           PREPARE_TESTS),
    Mutant('prepare-eval-document-shared', PREPARE, 'int(np.searchsorted(chunk.document_ends, taken)) + 1',
           'int(np.searchsorted(chunk.document_ends, taken))', PREPARE_TESTS),
    Mutant('prepare-eval-reads-every-file', PREPARE, 'return max(len(self.paths) - 1, 1)',
           'return len(self.paths)', PREPARE_TESTS),
    # One-shot importance.
    Mutant('importance-bottom-structures', IMPORTANCE, 'order[..., :num_kept]', 'order[..., -num_kept:]',
           IMPORTANCE_TESTS),
    Mutant('importance-signed-channel-activation', LLAMA_LAYOUT,
           'sums.intermediate[index] += args[0].detach().float().abs().sum((0, 1))',
           'sums.intermediate[index] += args[0].detach().float().sum((0, 1))', IMPORTANCE_TESTS),
    Mutant('importance-block-similarity-inverted', LLAMA_LAYOUT, 'sums.layer[index] += (1.0 - similarity)',
           'sums.layer[index] += similarity', IMPORTANCE_TESTS),
    # Evaluation's scoring.
    Mutant('evaluate-prediction-argmin', HARNESS, "record |= {'prediction': max(range(len(loglikelihoods))",
           "record |= {'prediction': min(range(len(loglikelihoods))", EVALUATE_TESTS),
    Mutant('evaluate-reports-acc-for-acc-norm', HARNESS,
           "reported = acc_norm if task.settings.metric == 'acc_norm' else acc", 'reported = acc', EVALUATE_TESTS),
)


class TableError(ValueError):
    """The mutant table does not fit the code or the tests."""


def mutated_source(mutant: Mutant, root: Path) -> tuple[str, str]:
    """The module's source under ``root`` and its mutated source; ``TableError`` unless the snippet occurs exactly
    once and the mutated module compiles."""
    path = root / mutant.module
    if not path.is_file():
        raise TableError(f'mutant {mutant.name}: {mutant.module} does not exist')
    source = path.read_text()
    count = source.count(mutant.original)
    if count != 1:
        raise TableError(f'mutant {mutant.name}: {mutant.original!r} occurs {count} times in {mutant.module}, not once')
    mutated = source.replace(mutant.original, mutant.replacement)
    try:
        compile(mutated, str(path), 'exec')
    except SyntaxError as error:
        raise TableError(f'mutant {mutant.name}: the mutated {mutant.module} does not compile: {error}') from None
    return source, mutated


def check_tests(mutant: Mutant, root: Path) -> None:
    """``TableError`` unless each of the mutant's test files exists and defines each test it names."""
    for node in mutant.tests:
        path, _, name = node.partition('::')
        if not (root / path).is_file():
            raise TableError(f'mutant {mutant.name}: test file {path} does not exist')
        if name and not re.search(rf'^def {re.escape(name)}\(', (root / path).read_text(), re.MULTILINE):
            raise TableError(f'mutant {mutant.name}: {path} has no test {name}')


def check_table(mutants: Sequence[Mutant], root: Path = REPO) -> None:
    """Check every mutant against the code and tests under ``root`` (``TableError`` at the first misfit)."""
    names = [mutant.name for mutant in mutants]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TableError(f'mutant names repeated: {repeated}')
    for mutant in mutants:
        mutated_source(mutant, root)
        check_tests(mutant, root)


def chosen_mutants(only: Sequence[str] | None) -> list[Mutant]:
    """The mutants named in ``only`` (in the table's order), or all."""
    if not only:
        return list(MUTANTS)
    by_name = {mutant.name: mutant for mutant in MUTANTS}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise TableError(f'--only: unknown mutant(s) {unknown}; --list shows them')
    return [mutant for mutant in MUTANTS if mutant.name in only]


def copy_checkout(root: Path, destination: Path) -> None:
    """Copy the files of the checkout at ``root`` that git tracks or would track (untracked ones that it does not
    ignore) to ``destination``, and link ``root``'s ``../shared`` beside it."""
    listing = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        cwd=root, capture_output=True, text=True,
    )
    if listing.returncode:
        raise TableError(f'cannot list the files of {root} with git: {listing.stderr.strip()}')
    for name in listing.stdout.split('\0'):
        source = root / name
        if name and (source.is_file() or source.is_symlink()):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)
    shared = root.parent / 'shared'
    if shared.is_dir():
        (destination.parent / 'shared').symlink_to(shared.resolve())


def copy_environment(copy: Path) -> dict[str, str]:
    """The environment of the test runs: the copy first on the path, no bytecode written (a module restored in the
    same second as its mutant was written, with the same size, would otherwise be read from the mutant's cache)."""
    return os.environ | {'PYTHONPATH': str(copy), 'PYTHONDONTWRITEBYTECODE': '1'}


def check_copy_is_imported(copy: Path) -> None:
    """``TableError`` unless the tests in the copy import the copy's ``llmshearing``."""
    found = subprocess.run(
        [sys.executable, '-c', 'import llmshearing; print(llmshearing.__file__)'],
        cwd=copy, env=copy_environment(copy), capture_output=True, text=True,
    )
    path = found.stdout.strip()
    if found.returncode or not Path(path).resolve().is_relative_to(copy.resolve()):
        raise TableError(f'the copy of the checkout imports llmshearing from {path or found.stderr.strip()}')


def run_tests(copy: Path, tests: Sequence[str], timeout_s: float | None) -> tuple[int | None, float, str]:
    """Run pytest on ``tests`` in ``copy``: (its exit status, ``None`` if it ran past ``timeout_s``; seconds; the
    last lines of its output). A run past its time, or interrupted, is killed with every process it started (they
    run in a session of their own, which a Ctrl-C at the terminal does not reach)."""
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, *PYTEST, *tests], cwd=copy, env=copy_environment(copy),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = None
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    tail = '\n'.join(output.strip().splitlines()[-TAIL_LINES:])
    return returncode, time.monotonic() - start, tail


def baseline_tests(mutants: Sequence[Mutant]) -> list[str]:
    """The union of the mutants' tests, each once, in the order of first use."""
    return list(dict.fromkeys(node for mutant in mutants for node in mutant.tests))


def run_mutant(mutant: Mutant, copy: Path, timeout_s: float) -> dict[str, object]:
    """Run the mutant's tests with its module mutated in ``copy``; restore the module."""
    source, mutated = mutated_source(mutant, copy)
    path = copy / mutant.module
    path.write_text(mutated)
    try:
        returncode, seconds, tail = run_tests(copy, mutant.tests, timeout_s)
    finally:
        path.write_text(source)
    if returncode is None:
        result = TIMED_OUT
    elif returncode == 0:
        result = SURVIVED
    elif returncode in FAILED_STATUSES or returncode < 0:  # a negative status: the tests died of a signal
        result = KILLED
    else:  # 5: no test selected (all of them slow?), 4: a usage error
        last_line = tail.splitlines()[-1] if tail else 'no output'
        raise TableError(f'mutant {mutant.name}: pytest exit {returncode}, not a test result: {last_line}')
    return {'name': mutant.name, 'module': mutant.module, 'result': result, 'seconds': round(seconds, 1),
            'tests': list(mutant.tests)}


def run_check(mutants: Sequence[Mutant], timeout_s: float, root: Path = REPO) -> dict[str, object]:
    """Check the table, run the unmutated tests, then every mutant; return the results (``TableError`` if the table
    does not fit or the unmutated tests fail)."""
    check_table(mutants, root)
    with tempfile.TemporaryDirectory(prefix='llmshearing-mutation-') as folder:
        copy = Path(folder) / 'repo'
        copy_checkout(root, copy)
        check_copy_is_imported(copy)
        tests = baseline_tests(mutants)
        log.info('Unmutated: %d test selections', len(tests))
        returncode, baseline_seconds, tail = run_tests(copy, tests, None)
        if returncode != 0:
            lines = tail.splitlines() or ['no output']
            failed = next((line for line in lines if line.startswith(('FAILED', 'ERROR'))), lines[-1])
            raise TableError(f'the unmutated tests do not pass (pytest exit {returncode}): {failed}')
        log.info('Unmutated tests pass (%.0f s)', baseline_seconds)
        results = []
        for number, mutant in enumerate(mutants, 1):
            results.append(run_mutant(mutant, copy, timeout_s))
            log.info('[%d/%d] %s: %s (%.0f s)', number, len(mutants), mutant.name, results[-1]['result'],
                     results[-1]['seconds'])
    killed = sum(result['result'] == KILLED for result in results)
    return {
        'killed': killed,
        'total': len(results),
        'survived': [result['name'] for result in results if result['result'] == SURVIVED],
        'timed_out': [result['name'] for result in results if result['result'] == TIMED_OUT],
        'baseline_seconds': round(baseline_seconds, 1),
        'mutants': results,
    }


def summary_lines(report: dict[str, object]) -> list[str]:
    """The results table and the killed / total line."""
    rows = [(result['name'], result['module'], result['result'], f'{result["seconds"]:.0f}')
            for result in report['mutants']]
    totals = (f'killed {report["killed"]}/{report["total"]} (survived {len(report["survived"])}, timed out '
              f'{len(report["timed_out"])}; unmutated tests {report["baseline_seconds"]:.0f} s)')
    return [*markdown_table(['mutant', 'module', 'result', 'seconds'], rows), '', totals]


def table_lines(mutants: Sequence[Mutant]) -> list[str]:
    """``--list``: each mutant with its change and its tests."""
    rows = [(mutant.name, mutant.module, f'`{mutant.original}` → `{mutant.replacement}`', ' '.join(mutant.tests))
            for mutant in mutants]
    return markdown_table(['mutant', 'module', 'change', 'tests'], rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m scripts.mutation_check', description=__doc__.splitlines()[0],
    )
    parser.add_argument('--only', nargs='+', metavar='NAME', help='run only these mutants (default: all)')
    parser.add_argument('--list', action='store_true', help='print the mutant table, checked against the code')
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT_S, metavar='S',
                        help=f'seconds one mutant\'s tests may run before it counts as timed out '
                             f'(default {DEFAULT_TIMEOUT_S})')
    parser.add_argument('--out', type=Path, metavar='FILE.json', help='also write the results to this new JSON file')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        if args.timeout <= 0:
            raise ParameterError('--timeout', f'must be positive, got {args.timeout:g}')
        if args.out is not None:
            check_new_file(args.out, '.json', '--out')
        mutants = chosen_mutants(args.only)
        if args.list:
            check_table(mutants)
            print('\n'.join(table_lines(mutants)))
            return 0
        report = run_check(mutants, args.timeout)
    except (TableError, ParameterError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except FileExistsError as error:
        print(f'error: --out: {error}', file=sys.stderr)
        return 2
    print('\n'.join(summary_lines(report)))
    if args.out is not None:
        write_json(args.out, report)
    return 0


if __name__ == '__main__':
    # A SIGTERM stops the tests and removes the copy, as a Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
