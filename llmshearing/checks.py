"""Errors that name the parameter at fault, and the checks every command shares.

Library and command functions name their Python parameters (``calibration_samples must be positive, got 0``); the
command line shows the same error with the flag (``--calibration-samples must be positive, got 0``) and the preflight
with the YAML key.
"""

from __future__ import annotations

from pathlib import Path

from llmshearing.choices import EVAL_DTYPES


class ParameterError(ValueError):
    """A bad value of the parameter ``parameter``: ``problem`` says what is wrong, after the parameter's name."""

    def __init__(self, parameter: str, problem: str):
        self.parameter = parameter
        self.problem = problem
        super().__init__(self.named(parameter))

    def named(self, name: str) -> str:
        """The message, with the parameter called ``name`` (a flag, a YAML key)."""
        return f'{name} {self.problem}'


class OutputExistsError(FileExistsError):
    """Output that is already there (``existing`` says what, ``replaced`` what ``overwrite`` would replace), given
    without the ``overwrite`` parameter."""

    parameter = 'overwrite'

    def __init__(self, existing: str, replaced: str = 'its files'):
        self.existing = existing
        self.replaced = replaced
        super().__init__(self.named('overwrite=True'))

    def named(self, name: str) -> str:
        """The message, with the ``overwrite`` parameter called ``name``."""
        return f'{self.existing}; pass {name} to replace {self.replaced}'


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``output_dir`` unless ``overwrite``."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f'output folder {output_dir} is not empty')


def check_positive(**values: int | None) -> None:
    """Raise ``ParameterError`` for the first of ``values`` that is given and not positive."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ParameterError(name, f'must be positive, got {value}')


def check_new_file(path: Path, suffix: str, parameter: str = 'out') -> None:
    """Refuse an output file ``path`` that exists (it is never overwritten) or does not end with ``suffix``."""
    if path.suffix != suffix:
        raise ParameterError(parameter, f'must name a {suffix} file, got {path}')
    if path.exists():
        raise FileExistsError(f'{path} exists; give a new file (it is never overwritten)')


def check_device(device: str) -> None:
    """Raise ``ParameterError`` on ``device`` unless it is ``cpu``, or ``cuda[:N]`` on a machine with CUDA."""
    if device != 'cpu' and not device.startswith('cuda'):
        raise ParameterError('device', f'must be cpu or cuda, got {device!r}')
    import torch  # the command line imports this module for its errors; torch only when a device is checked

    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ParameterError('device', f'{device}: this machine has no CUDA device')


def check_model_settings(dtype: str, device: str) -> None:
    """Refuse an unknown ``dtype`` (one of ``EVAL_DTYPES``) or a device this machine lacks."""
    if dtype not in EVAL_DTYPES:
        raise ParameterError('dtype', f'must be one of {list(EVAL_DTYPES)}, got {dtype!r}')
    check_device(device)
