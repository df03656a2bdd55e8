import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Helper modules, not tests: --doctest-modules would import them, and torch_models.py imports
# torch, which only the torch extra installs (the tests that use it skip without it).
collect_ignore = ["torch_models.py", "mesh_check.py", "multihost_check.py"]

# Check every jaxtyping annotation in offsetjax at call time (shapes and dtypes), as a user's
# own type-checked code would. Installed before anything imports offsetjax.
import jaxtyping  # noqa: E402
import pytest  # noqa: E402

import tests.typechecker  # noqa: E402,F401  (the hook refers to it by name)

jaxtyping.install_import_hook("offsetjax", "tests.typechecker.check")

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# "ci" (the default) keeps the fast tier in minutes; HYPOTHESIS_PROFILE=thorough runs each
# property on 1000 examples.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=20,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def without_type_checker():
    """Run a test with jaxtyping's checks off: what a user calling offsetjax without a type
    checker sees, e.g. the library's own message for integer images rather than the checker's."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


@pytest.fixture
def standard_promotion():
    """Implicit dtype promotion for a test that runs flax's BatchNorm in bfloat16, which mixes
    bfloat16 activations with float32 statistics inside flax."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def pytest_configure(config):
    """The fast tier (the default ``-m 'not slow'``) compiles ~2000 small XLA programs, most of its
    time: there LLVM's backend optimisation is off (about 30 % less wall time on 2 cores). Its
    assertions are exact counts or tolerances that hold at any optimisation level; the slow tier
    (parity with the authors' code, the pipelines) runs at XLA's defaults, as users do. Runs before
    any test touches a device, so the flag reaches the backend; a user's own flag wins."""
    flags = os.environ.get("XLA_FLAGS", "")
    if config.getoption("markexpr") == "not slow" and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
