import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=60,
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
