"""The library as a user imports it: value-equal models, a lean import, a README that runs."""

import contextlib
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import offsetjax as oj

ROOT = Path(__file__).resolve().parent.parent
_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *args, **kwargs: (
        _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
    )
)


@contextlib.contextmanager
def count_compilations():
    """Yield a list that, after the block, holds one entry per XLA compilation inside it."""
    start = len(_COMPILES)
    seen: list[str] = []
    yield seen
    seen.extend(_COMPILES[start:])


def test_equal_settings_give_equal_models_and_one_compilation():
    model = oj.models.small_resnet(4, activation=oj.models.Activation(oj.QCFS, levels=4))
    images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    first = oj.spiking_model(model, num_steps=3, presim_steps=2, iterations=1)
    second = oj.spiking_model(oj.models.small_resnet(4), num_steps=3, presim_steps=2, iterations=1)
    assert first == second and hash(first) == hash(second)
    assert first != oj.spiking_model(model, num_steps=3, presim_steps=2, iterations=1, saturated="hold")
    variables = oj.convert_variables(first, model.init(jax.random.key(1), images))
    logits = oj.simulate(first, variables, images)  # compiles the network once
    with count_compilations() as compiled:
        again = oj.simulate(second, variables, images)
    assert not compiled, compiled
    oj.simulate_with_statistics(first, variables, images)
    with count_compilations() as compiled:
        oj.simulate_with_statistics(second, variables, images)
    assert not compiled, compiled
    np.testing.assert_array_equal(logits, again)


def test_conversion_needs_no_images_and_calibration_keeps_the_batch_axis():
    model = oj.models.small_vgg(3)
    images = jax.random.normal(jax.random.key(2), (5, 8, 8, 1))
    snn = oj.spiking_model(model, num_steps=4, presim_steps=4, iterations=1)
    variables = oj.convert_variables(snn, model.init(jax.random.key(3), images))
    assert all(leaf.shape == () for leaf in jax.tree.leaves(variables["initial_potential"]))
    potentials = oj.calibrate_network(snn, variables, images)
    assert potentials["conv0_act"]["v0"].shape == (5, 8, 8, 32)


def test_import_offsetjax_loads_no_training_data_or_torch_modules():
    """The core stands alone: no training package, optimiser, checkpointing, data or plotting."""
    code = (
        "import sys, offsetjax; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow_datasets', 'orbax', 'torch', 'tqdm', "
        "'matplotlib', 'sklearn', 'optax', 'grain', 'nir') or m.startswith('offsetjax.training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a Markdown page (```py blocks are illustrations that need files a
    reader has)."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.slow
def test_readme_python_blocks_run_as_printed():
    """The README's example, as printed: it trains, converts, calibrates two ways and evaluates."""
    (block,) = python_blocks(ROOT / "README.md")
    assert len(block.strip().splitlines()) <= 22
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["cos"].accuracy.shape == (4,) and namespace["cos"].accuracy[-1] > 0.8
    assert namespace["data_v0"].accuracy[-1] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("page", ["usage.md", "multihost.md"])
def test_docs_python_blocks_run_as_printed(page):
    """Every ```python block of a page of docs/, in order, in one namespace per page."""
    blocks = python_blocks(ROOT / "docs" / page)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, page, "exec"), namespace)  # noqa: S102
    assert namespace["result"].accuracy.shape == (8,)


def test_usage_opens_with_converting_your_own_network_in_at_most_15_lines():
    """docs/usage.md's first block (executed with the others) converts a flax network with nn.relu."""
    text = (ROOT / "docs" / "usage.md").read_text()
    assert text.index("## Convert your own network") < text.index("## Using the library")
    first = python_blocks(ROOT / "docs" / "usage.md")[0]
    assert len(first.strip().splitlines()) <= 15
    assert "nn.relu" in first and "oj.from_jax" in first and "oj.spiking_model" in first


def test_every_page_with_python_blocks_is_executed_and_the_readme_is_a_front_page():
    pages = sorted(page.name for page in (ROOT / "docs").glob("*.md") if python_blocks(page))
    assert pages == ["multihost.md", "usage.md"]  # each in test_docs_python_blocks_run_as_printed
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.slow  # compiles several programs: kept out of the fast tier's 3 minutes
def test_scan_unroll_follows_t_and_changes_compilation_not_results():
    assert [oj.scan_unroll(t) for t in (1, 4, 8, 9, 64)] == [1, 4, 8, 1, 1]
    model = oj.models.small_vgg(2)
    # True == 1 in Python: a bool would make a fully unrolled model equal to a rolled one.
    with pytest.raises(ValueError, match=r"unroll must be None .* got True"):
        oj.spiking_model(model, num_steps=8, unroll=True)
    images = jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
    variables = model.init(jax.random.key(5), images)
    logits = {}
    for unroll in (None, 1, 3):
        snn = oj.spiking_model(model, num_steps=12, presim_steps=4, iterations=2, unroll=unroll)
        logits[unroll] = oj.simulate(snn, oj.convert_variables(snn, variables), images)
    np.testing.assert_array_equal(logits[None], logits[1])
    np.testing.assert_array_equal(logits[3], logits[1])


def _public_modules():
    import pkgutil

    names = ["offsetjax"]
    for info in pkgutil.walk_packages(oj.__path__, "offsetjax."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_public_module_declares_its_public_names(module_name):
    """Every public module has ``__all__`` and every name in it exists (the API reference and
    the experiments' imports are read from it)."""
    pytest.importorskip("nir") if module_name.endswith(".nir") else None
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names {missing}, which it does not define"
    undocumented = [
        name
        for name in module.__all__
        if (inspect.isfunction(obj := getattr(module, name)) or inspect.isclass(obj)) and not inspect.getdoc(obj)
    ]
    assert not undocumented, (
        f"{module_name} exports {undocumented} without a docstring (the API reference is read from them)"
    )


def test_the_experiments_use_only_public_names():
    """Every ``offsetjax.<module>.<name>`` the experiment scripts read (``from offsetjax.x
    import y``, ``oj.x.y``) is in that module's ``__all__`` or is a public submodule."""
    import ast
    import pathlib

    used = set()
    for path in pathlib.Path(__file__).resolve().parents[1].joinpath("experiments").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("offsetjax"):
                used.update((node.module, alias.name, path.name) for alias in node.names)
            elif isinstance(node, ast.Attribute):
                chain, inner = [node.attr], node.value
                while isinstance(inner, ast.Attribute):
                    chain.append(inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id == "oj" and len(chain) >= 2:
                    chain.reverse()
                    used.add((".".join(["offsetjax", *chain[:-1]]), chain[-1], path.name))
    private = []
    for module_name, name, where in sorted(used):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # an attribute of a value, not a module (oj.models.small_vgg(...).apply)
        submodule = hasattr(module, "__path__") and importlib.util.find_spec(f"{module_name}.{name}") is not None
        if any(part.startswith("_") for part in module_name.split(".")) or (
            name not in getattr(module, "__all__", ()) and not submodule
        ):
            private.append(f"{where}: {module_name}.{name}")
    assert not private, "experiments reach names outside the public API:\n" + "\n".join(private)


def _normalized(distribution: str) -> str:
    """A distribution's name as packaging compares it (PEP 503: runs of -_. as one -, lower case)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _dev_requirements() -> set[str]:
    """The distributions ``pip install -e '.[dev]'`` asks for, offsetjax's own extras followed
    (normalized names)."""
    from importlib import metadata

    wanted, seen, found = ["dev"], set(), set()
    requirements = metadata.requires("offsetjax") or []
    while wanted:
        extra = wanted.pop()
        seen.add(extra)
        for line in requirements:
            requirement, _, marker = line.partition(";")
            applies = not marker.strip() if extra is None else f'extra == "{extra}"' in marker
            if not applies:
                continue
            name = _normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group())
            if name == "offsetjax":
                inner = re.search(r"\[(.*)\]", requirement)
                wanted += [e.strip() for e in inner.group(1).split(",") if e.strip() not in seen] if inner else []
            else:
                found.add(name)
        if extra is not None and None not in seen:
            wanted.append(None)  # the core's own requirements
    return found


def test_test_modules_import_optional_packages_only_through_importorskip():
    """A package outside what the README's install gives (``.[dev]``) is imported by a test
    module only through ``pytest.importorskip``: imported at module level, its absence would be
    a collection error of the whole README test command instead of a skip."""
    import ast
    from importlib import metadata

    installed = metadata.packages_distributions()
    allowed = _dev_requirements()
    local = {"offsetjax", "experiments", "tests"}
    unguarded = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                distributions = {_normalized(d) for d in installed.get(top, ())}
                if not distributions & allowed:
                    unguarded.append(f"{path.name}:{node.lineno}: {name}")
    assert not unguarded, "optional packages imported at module level (use pytest.importorskip):\n" + "\n".join(
        unguarded
    )
