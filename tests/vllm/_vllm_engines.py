"""Prompts and the engine factory shared by tests/vllm (imported by its conftest and tests)."""

import vllm

PROMPTS = ["The capital of France is", "def fib(n):", "Once upon a time", "Water boils at",
           "My favourite colour is", "The three laws of robotics"]

_ALIVE = []


def engine(path, **kw):
    """A vLLM engine on ``path`` with the plug-in (fp32, eager, 32-token blocks).

    Engines stay alive until the session ends: an in-process engine that is garbage collected
    tears down vLLM's process-wide distributed state, which breaks the other engines.
    """
    import softkernels.vllm as skv
    args = dict(model=path, dtype="float32", enforce_eager=True, block_size=32,
                max_model_len=512, seed=0)
    args.update(kw)
    default = args.pop("default", None)
    e = vllm.LLM(**args, **skv.engine_kwargs(default=default))
    _ALIVE.append(e)
    return e
