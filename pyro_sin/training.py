"""A minibatch training loop around :class:`pyro.infer.SVI` with a progress bar."""

import math
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm


class History(NamedTuple):
    """What :func:`fit` recorded: the loss of every step and periodic evaluations."""

    losses: List[float]
    eval_steps: List[int]
    eval_seconds: List[float]  # training time (evaluations excluded) at each evaluation
    evals: List[Dict[str, float]]


def minibatch_indices(num_data: int, batch_size: int, generator: torch.Generator):
    """
    Endless minibatches of indices, reshuffled every epoch.

    :param torch.Generator generator: the indices are drawn, and returned, on its device.
    """
    if not 0 < batch_size <= num_data:
        raise ValueError(f"batch_size must lie in [1, {num_data}], got {batch_size}")
    while True:
        order = torch.randperm(num_data, generator=generator, device=generator.device)
        for start in range(0, num_data - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def fit(
    svi,
    data: Union[torch.Tensor, Sequence[torch.Tensor]],
    *,
    iterations: int,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    evaluate: Optional[Callable[[], Dict[str, float]]] = None,
    eval_every: int = 50,
    max_seconds: Optional[float] = None,
    progress: bool = True,
    desc: str = "SVI",
) -> History:
    """
    Runs ``svi.step(data[idx], indices=idx)`` on random minibatches.

    :param data: a tensor, or a tuple of tensors with one row per data point
        (e.g. sequences, their missing-frame mask and their lengths); each is
        indexed by the same minibatch and passed positionally,
        ``svi.step(*(d[idx] for d in data), indices=idx)``.
    :param evaluate: called at step 0, every ``eval_every`` steps and at the end;
        returns named metrics shown in the progress bar and kept in the history.
    :param max_seconds: stop early once training (evaluations excluded) has taken this long.
    :raises FloatingPointError: when the loss becomes NaN or infinite.
    """
    parts = (data,) if torch.is_tensor(data) else tuple(data)
    if not parts or not all(torch.is_tensor(part) and part.dim() > 0 for part in parts):
        raise TypeError("fit: data must be a tensor or a tuple of tensors with one row per data point")
    num_data = len(parts[0])
    if any(len(part) != num_data for part in parts):
        raise ValueError(f"fit: the tensors in data must share their first dimension, got {[len(p) for p in parts]}")
    generator = generator or torch.Generator().manual_seed(0)  # the same minibatches on every device
    batches = minibatch_indices(num_data, batch_size, generator)
    history = History([], [], [], [])
    training_seconds = 0.0

    def record(step):
        if evaluate is not None:
            history.eval_steps.append(step)
            history.eval_seconds.append(training_seconds)
            history.evals.append(evaluate())

    record(0)
    bar = tqdm(range(1, iterations + 1), desc=desc, disable=not progress, mininterval=0.5)
    running = None
    for step in bar:
        start = time.perf_counter()
        idx = next(batches).to(parts[0].device)
        batch = (part[idx] for part in parts)
        loss = svi.step(*batch, indices=idx) / num_data  # the bound is scaled to the full data set
        training_seconds += time.perf_counter() - start
        if not math.isfinite(loss):
            raise FloatingPointError(f"{desc}: the loss became {loss} at step {step}")
        history.losses.append(loss)
        running = loss if running is None else 0.95 * running + 0.05 * loss
        out_of_time = max_seconds is not None and training_seconds >= max_seconds
        if step % eval_every == 0 or step == iterations or out_of_time:
            record(step)
        if progress:
            postfix = {"-elbo/pt": f"{running:.3f}"}
            if history.evals:
                postfix.update({k: f"{v:.3g}" for k, v in history.evals[-1].items()})
            bar.set_postfix(postfix, refresh=False)
        if out_of_time:
            break
    bar.close()
    return history
