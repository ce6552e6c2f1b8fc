import os
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# FLASHGRU_TESTS_WITHOUT_TRITON=1: the suite as on a machine without the optional Triton
# (its import blocked in this process and in pytest-xdist's workers, which read this too):
# the Triton backend's tests skip, everything else must pass (.ci/run's second pass).
if os.environ.get("FLASHGRU_TESTS_WITHOUT_TRITON") == "1":
    sys.modules["triton"] = None  # (import triton then raises ImportError)

# Without a GPU, the Triton backend's kernels run in Triton's interpreter on the CPU. This
# must be set before Triton is first imported (flashgru imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_patches_once_a_launch():
    """Triton's interpreter patches the builtins of the triton.language modules a function
    sees (inspect.getmembers over four namespaces) at every launch, and again at every call
    of a @triton.jit function from inside a kernel; only the launch's end undoes them. A
    second patch of a module within one launch finds nothing left to patch (a patched
    builtin is no longer marked as one). Those repeats took a quarter of the crossed split's
    tests (cProfile, Triton 3.9). Here a call from inside a kernel patches only the modules
    not yet patched in this launch (triton.language.core, for its standard functions such
    as tl.zeros); a launch patches as before. Where the interpreter has another shape,
    nothing changes."""
    try:
        import threading

        import triton.language as tl
        from triton.runtime import interpreter
        patch, scope, device_fn = (interpreter._patch_lang, interpreter._LangPatchScope,
                                   interpreter.InterpretedFunction)
        call = device_fn.__call__
    except (ImportError, AttributeError):
        return
    state, seen = threading.local(), {}  # (seen: a module's triton.language modules)

    def _patch_lang(fn):
        key = id(fn.__globals__)
        if key not in seen:
            seen[key] = {id(v) for v in fn.__globals__.values() if v is tl or v is tl.core}
        langs = seen[key]
        if not getattr(state, "depth", 0):  # (a launch)
            state.patched = set(langs)  # (a copy: it grows within the launch)
        elif langs <= state.patched:
            return scope()
        else:
            state.patched |= langs
        return patch(fn)

    def __call__(self, *args, **kwargs):
        state.depth = getattr(state, "depth", 0) + 1
        try:
            return call(self, *args, **kwargs)
        finally:
            state.depth -= 1

    interpreter._patch_lang = _patch_lang
    device_fn.__call__ = __call__


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_patches_once_a_launch()


@pytest.fixture
def no_tf32():
    """fp32 means fp32 in the references: cuDNN's RNNs otherwise use TF32 by default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pytest_configure(config):
    """The process that owns the run (not a pytest-xdist worker) makes the folder where the
    slow subprocesses (helpers.background) leave their output; workers inherit its name
    through the environment, as they inherit OpenMP's wait policy."""
    import helpers
    if not hasattr(config, "workerinput"):
        os.environ[helpers.JOBS] = tempfile.mkdtemp(prefix="flashgru-tests-")
        if getattr(config.option, "numprocesses", None):
            # pytest-xdist's workers share the cores: torch's OpenMP threads must sleep
            # while they wait, not spin (spinning, the suite took 434 s on 2 cores with 2
            # workers, 289 s without; 543 s in one process)
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_finish(session):
    """The slow subprocesses the selected tests read (helpers.background) start now, on a
    free core, rather than when their first reader runs: once in the run, by the first
    process here (each pytest-xdist worker collects every test)."""
    import helpers
    if session.config.option.collectonly:
        return
    helpers.start_background({name for item in session.items
                              for name in getattr(item, "fixturenames", ())})


def pytest_unconfigure(config):
    import helpers
    if not hasattr(config, "workerinput"):
        helpers.stop_background()
    else:
        helpers.reap_background()
