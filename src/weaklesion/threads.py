"""How many CPU threads torch uses for one operation (its intra-op pool).

torch starts with one thread per core. On a shared machine that is the wrong default:
while other processes keep the cores busy, the threads of one operation wait on each
other. On 2 cores with a load average of 5 to 11 (other users' jobs), torch's default
of 2 threads against 1 took 9.6-10.5 times as long for a batched Poisson-binomial pmf
(64 maps x 1,000 regions), 2.6-4.9 times for a training step of the demo's U-Net and
5.5-6.9 times for one of a GP-Unet (medians over rounds; ``benchmarks/bench_threads.py``,
results in ``benchmarks/results/threads.json``). With the cores free, the policy keeps
torch's default of one thread per core.

The policy, in order:

1. a number the user asked for (``--threads``, the ``num_threads`` setting of a
   training configuration);
2. the environment variable ``WEAKLESION_NUM_THREADS``;
3. ``OMP_NUM_THREADS``, which torch itself reads at start-up;
4. otherwise the cores left free by the other processes: the number of cores less the
   1-minute load average, rounded to the nearest whole number, at least 1.

:func:`apply_thread_policy` applies it; the ``weaklesion`` command and
:func:`weaklesion.training.train` call it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

ENVIRONMENT_VARIABLE = "WEAKLESION_NUM_THREADS"


def _positive_whole_number(value: object, name: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}: got {value!r}; expected a positive whole number")
    return int(text)


def choose_threads(
    requested: int | None = None,
    environment: Mapping[str, str] | None = None,
    cores: int | None = None,
    load: float | None = None,
) -> int:
    """Number of intra-op threads for torch under the package's policy.

    Parameters
    ----------
    requested : int or None
        A number the user asked for; it wins over everything else.
    environment : mapping or None
        Environment variables (``os.environ`` when None); ``WEAKLESION_NUM_THREADS``
        comes before ``OMP_NUM_THREADS``.
    cores : int or None
        CPU cores this process may use (``os.sched_getaffinity`` or ``os.cpu_count``
        when None).
    load : float or None
        1-minute load average: processes running or waiting for a core
        (``os.getloadavg`` when None; 0 where the system has none).

    Returns
    -------
    threads : int
        At least 1; with nothing requested, at most ``cores``.

    Raises
    ------
    ValueError
        If the requested number or an environment variable is not a positive whole
        number.

    Examples
    --------
    >>> choose_threads(cores=2, load=0.2, environment={})
    2
    >>> choose_threads(cores=2, load=3.5, environment={})
    1
    >>> choose_threads(cores=16, load=4.3, environment={})
    12
    >>> choose_threads(cores=2, load=3.5, environment={"OMP_NUM_THREADS": "2"})
    2
    >>> choose_threads(3, environment={"WEAKLESION_NUM_THREADS": "1"})
    3
    """
    if requested is not None:
        return _positive_whole_number(requested, "threads")
    environment = os.environ if environment is None else environment
    for name in (ENVIRONMENT_VARIABLE, "OMP_NUM_THREADS"):
        if environment.get(name, "").strip():
            return _positive_whole_number(environment[name], name)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def apply_thread_policy(requested: int | None = None) -> int:
    """Set torch's intra-op thread count by :func:`choose_threads` and return it.

    Parameters
    ----------
    requested : int or None
        A number the user asked for; None follows the environment and the load.

    Returns
    -------
    threads : int
        The number now in force (``torch.get_num_threads()``).
    """
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
