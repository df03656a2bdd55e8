"""results.json -> results.md tables and PNG plots (matplotlib is an optional extra).

python -m experiments.report results/fashion_mnist/small_vgg ...   # rewrite them from results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments import cli, latency
from experiments.results import (
    RunError,
    accuracy_cell,
    best_lines,
    load_results,
    pyplot,
    record,
    results_directory,
    save_figure,
    studying,
    write_output,
)
from offsetjax.stats import PSI_BINS


def _steps(results: dict) -> list[str]:
    """Every T some method was evaluated at, in order."""
    return [str(t) for t in sorted({int(t) for row in results["snn"].values() for t in row["accuracy"]})]


def equal_budget(results: dict) -> tuple[list[int], dict[str, dict[int, float]]]:
    """Accuracy by total steps (T + pre-simulation): ``(totals, {method: {total: accuracy}})``,
    totals 1..the uncalibrated baseline's largest T (the budget every row can be read at)."""
    by_total = {
        name: {row["total_steps"][t]: row["accuracy"][t] for t in row["accuracy"]}
        for name, row in results["snn"].items()
    }
    return list(range(1, max(by_total["qcfs"]) + 1)), by_total


def equal_budget_lines(results: dict) -> list[str]:
    """The equal-budget table: a row per total, a column per method, the best bold ("—": the
    method has no T with that total: its pre-simulation alone is longer, or T > its T_max)."""
    totals, by_total = equal_budget(results)
    return best_lines("total steps", totals, by_total)


def write_markdown(results: dict) -> str:
    steps = _steps(results)
    lines = [
        f"# {results['dataset']} / {results['arch']} (QCFS L = {results['levels']})",
        "",
        f"ANN accuracy: {100 * results['ann_accuracy']:.2f}% on {results['num_test_examples']} test images. "
        "T excludes pre-simulation; total = T + rho * k steps.",
        "",
        "| method | rho | k | " + " | ".join(f"T={t} (total)" for t in steps) + " |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    for name, row in results["snn"].items():
        cells = [accuracy_cell(row, t) for t in steps]
        lines.append(f"| {name} | {row['presim_steps']} | {row['iterations']} | " + " | ".join(cells) + " |")
    calibrated = {
        name: row["calibration_images"] for name, row in results["snn"].items() if row.get("calibration_images")
    }
    if calibrated:
        lines += [
            "",
            "Data-level rows (calibrated once per T on training images, no extra steps): "
            + ", ".join(f"{name} ({count} images)" for name, count in calibrated.items())
            + ". For SRP, rho is its tau.",
        ]
    lines += [
        "",
        "Equal budget: accuracy (%) by total steps per sample, T plus pre-simulation (best in bold):",
        "",
        *equal_budget_lines(results),
    ]
    lines += [
        "",
        f"Offset spikes at T = L = {results['levels']} over all neurons and test images (Table 3 quantities):",
        "",
        "| method | zero ratio | MSE | abs(psi)=0 | 1 | 2 | >=3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["offset"].items():
        hist = row["psi_histogram"]
        lines.append(
            f"| {name} | {100 * row['zero_ratio']:.2f}% | {row['mse']:.4f} | "
            + " | ".join(f"{100 * hist[b]:.2f}%" for b in PSI_BINS)
            + " |"
        )
    if results.get("operations"):
        any_ops = next(iter(results["operations"].values()))
        steps = [t for t in steps if int(t) & (int(t) - 1) == 0] or steps  # T = 1, 2, 4, 8, ...
        lines += [
            "",
            "Operations per image (offsetjax.count_operations; counted by events; energy at 45 nm, "
            "0.9 pJ per accumulate, 4.6 pJ per multiply-accumulate; memory and data movement not included). "
            f"ANN: {any_ops['dense_macs'] / 1e6:.2f} M MACs, {1e6 * results['ann_energy_j']:.2f} uJ. "
            f"The SNN's first layer: {any_ops['input_macs'] / 1e6:.2f} M MACs on the analog image, once.",
            "",
            "| method | " + " | ".join(f"T={t}: synops (M), uJ" for t in steps) + " | pre-simulation share at T_max |",
            "|---|" + "---|" * (len(steps) + 1),
        ]
        for name, ops in results["operations"].items():
            cells = [
                f"{ops['synops'][t] / 1e6:.2f}, {1e6 * ops['energy_j'][t]:.2f}" if t in ops["synops"] else "—"
                for t in steps
            ]
            last = list(ops["presim_energy_share"])[-1]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * ops['presim_energy_share'][last]:.1f}% |")
    if "latency_ticks" in results:
        lines += ["", *latency.markdown(results, results["latency_ticks"]).splitlines()]
    wall = results.get("wall_time_seconds", {})
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in wall.items())]
    if "command" in results:
        lines += ["", f"Reproduce: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def write_plots(results: dict, workdir: Path, *, overwrite: bool = False) -> list[Path]:
    """Accuracy vs T and vs total steps, |psi| per layer, zero ratio / MSE vs k. Returns the files."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    title = f"{results['dataset']} / {results['arch']} (L = {results['levels']})"

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, row in results["snn"].items():
        steps = [int(t) for t in row["accuracy"]]
        accuracy = [100 * row["accuracy"][str(t)] for t in steps]
        axes[0].plot(steps, accuracy, marker="o", label=name)
        axes[1].plot([row["total_steps"][str(t)] for t in steps], accuracy, marker="o", label=name)
    for axis, label in zip(axes, ("T (time steps, pre-simulation excluded)", "total steps (T + rho * k)")):
        axis.axhline(100 * results["ann_accuracy"], color="black", linestyle="--", label="ANN")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    written.append(save_figure(fig, workdir / "accuracy_vs_steps.png", overwrite=overwrite))

    per_layer = results["offset_per_layer"]
    names = list(per_layer)
    sites = list(per_layer[names[0]])
    columns = min(4, len(names))
    grid_rows = -(-len(names) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(4 * columns, 4 * grid_rows), sharey=True, squeeze=False)
    for axis in axes.flat[len(names) :]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, names):
        bottom = [0.0] * len(sites)
        for bin_name in PSI_BINS:
            values = [100 * per_layer[name][site]["psi_histogram"][bin_name] for site in sites]
            axis.bar(range(len(sites)), values, bottom=bottom, label=f"|psi|={bin_name}")
            bottom = [b + v for b, v in zip(bottom, values)]
        axis.set_title(name)
        axis.set_xticks(range(len(sites)), sites, rotation=90, fontsize=7)
    axes[0][0].set_ylabel("% of neurons")
    axes.flat[len(names) - 1].legend(loc="lower right")
    fig.suptitle(f"{title}: |offset spike| per layer at T = L")
    written.append(save_figure(fig, workdir / "psi_per_layer.png", overwrite=overwrite))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    snn = results["snn"]
    rules = sorted(
        {row["saturated"] for row in snn.values() if row.get("family", "cos") == "cos" and row.get("saturated")}
    )
    cos_rows = [n for n in names if snn[n].get("family", "cos") in ("qcfs", "cos")]
    for rule in rules or [None]:  # one line per saturation rule, each starting from the baseline
        line = [n for n in cos_rows if snn[n]["iterations"] == 0 or snn[n].get("saturated") == rule]
        iterations = [snn[n]["iterations"] for n in line]
        label = f"saturated={rule}" if rule else None
        axes[0].plot(iterations, [100 * results["offset"][n]["zero_ratio"] for n in line], marker="o", label=label)
        axes[1].plot(iterations, [results["offset"][n]["mse"] for n in line], marker="o", label=label)
    axes[0].set_ylabel("neurons with psi = 0 (%)")
    axes[1].set_ylabel("MSE (SNN rate vs QCFS)")
    if len(rules) > 1:
        axes[1].legend()
    for axis in axes:
        axis.set_xlabel("calibration iterations k (0 = QCFS baseline)")
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    written.append(save_figure(fig, workdir / "offset_vs_iterations.png", overwrite=overwrite))

    totals, by_total = equal_budget(results)
    fig, axis = plt.subplots(figsize=(7, 4.5))
    styles = {"qcfs": "-", "cos": "-", "data_v0": "--", "data_bias": "--", "warm_cos": ":", "srp": "-."}
    colors = iter(plt.get_cmap("tab10").colors)
    for name, row in by_total.items():
        if snn[name].get("saturated") == "hold":
            continue  # saturated="hold" rows are in results.md; drawn, they would hide their "fire" rows
        points = sorted((total, accuracy) for total, accuracy in row.items() if total <= totals[-1])
        style = styles.get(snn[name].get("family", "cos"), "-")
        color = "black" if name == "qcfs" else next(colors)
        axis.plot(
            [p[0] for p in points],
            [100 * p[1] for p in points],
            style,
            color=color,
            marker="o",
            markersize=3,
            label=name,
        )
    axis.axhline(100 * results["ann_accuracy"], color="black", linestyle=":", label="ANN")
    axis.set_xlabel("total steps per sample (T + pre-simulation)")
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_xticks(totals)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title}: methods at equal total steps")
    written.append(save_figure(fig, workdir / "equal_budget.png", overwrite=overwrite))

    if results.get("operations"):
        fig, axis = plt.subplots(figsize=(6, 4))
        for name, ops in results["operations"].items():
            steps = list(ops["energy_j"])
            axis.plot(
                [1e6 * ops["energy_j"][t] for t in steps],
                [100 * results["snn"][name]["accuracy"][t] for t in steps],
                marker="o",
                label=name,
            )
        axis.scatter([1e6 * results["ann_energy_j"]], [100 * results["ann_accuracy"]], color="black", label="ANN")
        axis.set_xscale("log")
        axis.set_xlabel("energy per image (uJ, 45 nm; points: T = 1, 2, ...)")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        fig.suptitle(f"{title}: accuracy against energy")
        written.append(save_figure(fig, workdir / "accuracy_vs_energy.png", overwrite=overwrite))
    if "latency_ticks" in results and latency.plot(
        results, results["latency_ticks"], workdir / "accuracy_vs_latency.png"
    ):
        written.append(workdir / "accuracy_vs_latency.png")
    return written


#: The files :func:`write_markdown` and :func:`write_plots` write in a run's directory.
REPORT_FILES = (
    "results.md",
    "accuracy_vs_steps.png",
    "psi_per_layer.png",
    "offset_vs_iterations.png",
    "equal_budget.png",
    "accuracy_vs_energy.png",
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", type=results_directory, help="finished runs (holding results.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace reports edited by hand or not offsetjax's")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for workdir in args.workdirs:
            with studying(workdir, REPORT_FILES, overwrite=args.overwrite):
                results = load_results(workdir)
                write_output(workdir, "results.md", write_markdown(results), overwrite=args.overwrite)
                plots = write_plots(results, workdir, overwrite=args.overwrite)
                record(workdir, *plots)
                print(workdir, [path.name for path in plots])
    except RunError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
