"""offsetjax's experiments: configurations and scripts that run the library on real data.

Run from the repository root as modules, e.g. ``python -m experiments.quickstart``. The package:

* :mod:`experiments.config` — :class:`ExperimentConfig`, its command line and its validation;
* :mod:`experiments.methods` — the table of methods a run evaluates (a row per method);
* :mod:`experiments.datasets` — the splits and the calibration images of a configuration;
* :mod:`experiments.training` — the network, training with checkpoints, restoring a finished run;
* :mod:`experiments.evaluation` — every method at every T, as the ``results.json`` schema;
* :mod:`experiments.runs` — a run's lifecycle in its directory (lock, refuse, resume, overwrite);
* :mod:`experiments.results` — what runs write and read: atomic writes, the record of outputs,
  table cells, reproduce commands, finished results.

Entry points are configurations (``quickstart``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
``imagenet``); the other modules with a ``main`` study finished runs (``report``,
``readme_table``, ``calibration_sweep``, ``levels_sweep``, ``nir_export``, ``nir_peers``,
``latency``) or time the library (``benchmark``, ``epoch_time``, ``probes``).
"""
