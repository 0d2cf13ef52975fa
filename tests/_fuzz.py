"""Shared settings of the property-based fuzz modules (tests/test_fuzz_<op>.py).

Each module draws random valid inputs and compares the op with its float64 reference
(softkernels/reference.py), and random invalid inputs expecting a ValueError / TypeError that names
the bad argument. SOFTKERNELS_FUZZ_EXAMPLES sets the examples per property (default 500: under a
minute for all modules on two cores); a failure prints the example and a @reproduce_failure blob.
Nothing is stored between runs (database=None), so every run explores new inputs.
"""

import os
import re

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SOFTKERNELS_FUZZ_EXAMPLES", "500"))

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


seeds = st.integers(0, 2 ** 31 - 1)
keys = st.integers(-(2 ** 63), 2 ** 63 - 1)


def expect_named_error(call, name: str):
    """call() must raise ValueError or TypeError whose message names the argument."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", str(info.value)), (
        f"error does not name {name!r}: {info.value}")


def invalid_arguments(bad, valid_args):
    """Strategy of (name, args): the valid arguments valid_args(generator) with one of them,
    ``name`` (drawn from ``bad``: (name, [bad values])), replaced by one of its bad values."""
    @st.composite
    def strategy(draw):
        name, values = draw(st.sampled_from(bad))
        args = valid_args(generator(draw(seeds)))
        value = draw(st.sampled_from(values))
        if name.startswith("state."):                     # a field of a NamedTuple argument
            args["state"] = args["state"]._replace(**{name.split(".", 1)[1]: value})
        else:
            args[name] = value
        return name, args
    return strategy()


def expect_call_names(fn, positional, call):
    """fn(*positional args, **the rest) must raise an error naming the replaced argument."""
    name, args = call
    args = dict(args)
    pos = [args.pop(n) for n in positional]
    expect_named_error(lambda: fn(*pos, **args), name)
