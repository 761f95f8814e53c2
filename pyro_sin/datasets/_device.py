import functools

import torch


def built_on_cpu(fn):
    """
    Runs a data-set builder on the CPU whatever ``torch.set_default_device`` says:
    its seeded CPU generator then draws the same numbers on every machine, and a
    generator never meets tensors on another device. Move the result with ``.to(device)``.
    """

    @functools.wraps(fn)
    def build(*args, **kwargs):
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return build
