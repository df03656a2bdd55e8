"""How much each calibration convention changes the spikes, against the authors' evaluation.

    python -m experiments.probes.reference_conventions > results/probes/reference_conventions.txt

Needs torch. Runs the networks of ``tests/test_parity.py`` (VGG-16 and ResNet-20 in the authors'
layout, random float64 weights with measured batch-norm statistics, batch 4, rho = 4, k = 1)
through the PyTorch rewrite of the authors' calibrated evaluation and through offsetjax with:

* the default (``saturated="fire"``, plain floor in round 1): the authors' semantics;
* ``saturated="hold"``: saturated neurons left unshifted;
* ``round1-tolerance``: the default, but round 1 snaps v/theta within 1e-4 of an integer;
* ``hold+round1-tolerance``: both, the convention of offsetjax 0.1.0.

Prints, per network and T, the neurons (over all sites and images) whose spike train differs
from the authors' and how many of the 4 images get the same prediction at each t.
"""

import argparse
import copy

import jax
import numpy as np
import torch

from experiments import cli
from offsetjax import offset
from tests.test_parity import PRESIM_STEPS, channels_last, offsetjax_run, reference_network
from tests.torch_models import calibrated_snn

plain_floor = offset.offset_from_residual


def round1_tolerance(v, theta, *, tolerance=None):
    """offsetjax 0.1.0's judgement: v/theta within 1e-4 of an integer counts as that integer."""
    return plain_floor(v, theta, tolerance=1e-4 if tolerance is None else tolerance)


def build_parser() -> argparse.ArgumentParser:
    return cli.ArgumentParser(description=__doc__.split("\n")[0])  # no options: prints its table


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    print("network T convention differing_neurons/all same_prediction_per_t")
    for arch in ("vgg16", "resnet20"):
        model, images = reference_network(arch)
        for num_steps in (4, 8):
            reference, trace = calibrated_snn(
                copy.deepcopy(model), num_steps=num_steps, presim_steps=PRESIM_STEPS, batch_size=len(images)
            )
            with torch.no_grad():
                out = reference(images).reshape(num_steps, len(images), -1).numpy()
            want_prediction = np.cumsum(out, axis=0).argmax(-1)
            for convention in ("default", "hold", "round1-tolerance", "hold+round1-tolerance"):
                offset.offset_from_residual = round1_tolerance if "tolerance" in convention else plain_floor
                jax.clear_caches()
                with jax.enable_x64(True):
                    logits, spikes, _ = offsetjax_run(
                        arch,
                        model.state_dict(),
                        images.permute(0, 2, 3, 1).numpy(),
                        num_steps,
                        saturated="hold" if "hold" in convention else "fire",
                    )
                total = sum(site.spikes[0].numel() for site in trace)
                differ = sum(
                    int(np.sum(np.any(got != channels_last(site.spikes.numpy()), axis=0)))
                    for site, got in zip(trace, spikes)
                )
                same = (logits.argmax(-1) == want_prediction).sum(axis=1).tolist()
                print(
                    f"{arch} {num_steps} {convention} {differ}/{total} ({100 * differ / total:.2f}%) {same}", flush=True
                )
    offset.offset_from_residual = plain_floor


if __name__ == "__main__":
    main()
