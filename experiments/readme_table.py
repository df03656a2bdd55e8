"""Print the results tables of the README and docs/results.md from results/*/results.json (no number is typed by hand).

python -m experiments.readme_table results/fashion_mnist/small_vgg results/fashion_mnist/small_resnet
python -m experiments.readme_table results/digits/small_vgg ... --methods qcfs cos_k1 data_bias
python -m experiments.readme_table --energy results/quickstart results/fashion_mnist/small_vgg ...
python -m experiments.readme_table --nir results/quickstart results/fashion_mnist/small_vgg ...
python -m experiments.readme_table --budget results/digits/small_vgg results/fashion_mnist/small_vgg ...
python -m experiments.readme_table --latency results/digits/small_vgg results/fashion_mnist/small_vgg ...
python -m experiments.readme_table --seeds results/digits/seeds/seed* --methods qcfs cos_k1 data_bias srp
"""

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments import cli
from experiments.cli import Name
from experiments.latency import load_latency
from experiments.latency import markdown as latency_markdown
from experiments.report import equal_budget, equal_budget_lines
from experiments.results import STEPS, RunError, accuracy_cell, check_derived, load_results, results_directory


def rows(run: Path, methods: list[str] | None = None) -> list[str]:
    results = load_results(run)
    out = []
    for name, row in results["snn"].items():
        if methods and name not in methods:
            continue
        cells = " | ".join(accuracy_cell(row, t) for t in STEPS)
        offset = results["offset"][name]
        out.append(
            f"| {results['dataset']} | {results['arch']} | {name} | {100 * results['ann_accuracy']:.2f} | {cells} "
            f"| {100 * offset['zero_ratio']:.2f}% | {offset['mse']:.4f} |"
        )
    return out


def energy_rows(run: Path) -> list[str]:
    results = load_results(run)
    out = []
    for name, ops in results["operations"].items():
        accuracy = results["snn"][name]["accuracy"]
        cells = " | ".join(
            f"{100 * accuracy[t]:.2f}% / {ops['synops'][t] / 1e6:.2f} / {1e6 * ops['energy_j'][t]:.2f}"
            if t in ops["synops"]
            else "—"
            for t in STEPS
        )
        share = 100 * ops["presim_energy_share"][list(ops["synops"])[-1]]
        out.append(
            f"| {results['dataset']} / {results['arch']} | {name} | {100 * results['ann_accuracy']:.2f}% / {ops['dense_macs'] / 1e6:.2f} "
            f"/ {1e6 * results['ann_energy_j']:.2f} | {cells} | {share:.1f}% |"
        )
    return out


NIR_RUNS = {
    "simulate": "`simulate`",
    "nir_offsetjax_semantics": "NIR graph, offsetjax semantics",
    "nir_literal_semantics": "NIR graph, NIR's literal IF",
}


def nir_rows(run: Path) -> list[str]:
    report = check_derived(run, "nir.json", "experiments.nir_export")
    return [
        f"| {report['dataset']} / {report['arch']} | {method} | {NIR_RUNS[key]} | "
        + " | ".join(f"{100 * row[t]:.2f}" if t in row else "—" for t in STEPS)
        + " |"
        for method, runs in report["methods"].items()
        for key, row in runs.items()
    ]


def spread(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (sample standard deviation, n - 1) of ``values`` times ``scale``."""
    values = scale * np.asarray(values, np.float64)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def seed_rows(paths: list[Path], methods: list[str] | None = None) -> list[str]:
    """The accuracy table over seeds: runs of the same data and network grouped, each cell the
    mean ± standard deviation over them (the runs must differ only in their seed)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in paths:
        results = load_results(path)
        groups[(results["dataset"], results["arch"])].append(results)
    out = []
    for (dataset, arch), runs in groups.items():
        names = [name for name in runs[0]["snn"] if not methods or name in methods]
        for name in names:
            rows_of = [run["snn"][name] for run in runs if name in run["snn"]]
            if len(rows_of) != len(runs):
                raise RunError(f"method {name} is missing from some {dataset} / {arch} runs: evaluate every seed alike")
            cells = []
            for t in STEPS:
                if t not in rows_of[0]["accuracy"]:
                    cells.append("—")
                    continue
                total = rows_of[0]["total_steps"][t]
                cells.append(f"{spread([row['accuracy'][t] for row in rows_of])} ({total})")
            zero = spread([run["offset"][name]["zero_ratio"] for run in runs])
            ann = spread([run["ann_accuracy"] for run in runs])
            out.append(f"| {dataset} | {arch} | {len(runs)} | {name} | {ann} | " + " | ".join(cells) + f" | {zero}% |")
    return out


def budget_tables(paths: list[Path]) -> list[str]:
    """Each run's equal-budget table, then the winner per total across runs."""
    runs = [load_results(path) for path in paths]
    lines = []
    for results in runs:
        lines += [
            f"**{results['dataset']} / {results['arch']}** (ANN {100 * results['ann_accuracy']:.2f}%):",
            "",
            *equal_budget_lines(results),
            "",
        ]
    names = [f"{r['dataset']} / {r['arch']}" for r in runs]
    lines += ["| total steps | " + " | ".join(f"{n}: best (vs qcfs)" for n in names) + " |"]
    lines += ["|---|" + "---|" * len(runs)]
    tables = [equal_budget(results) for results in runs]
    totals = max((totals for totals, _ in tables), key=len)
    for total in totals:
        cells = []
        for _, by_total in tables:
            values = {name: row[total] for name, row in by_total.items() if total in row}
            if "qcfs" not in values:  # beyond this run's table
                cells.append("—")
                continue
            best = max(values.values())
            winners = "/".join(name for name, value in values.items() if value == best)
            cells.append(f"{winners} {100 * best:.2f} ({100 * values['qcfs']:.2f})")
        lines.append(f"| {total} | " + " | ".join(cells) + " |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    table = parser.add_mutually_exclusive_group()
    for flag in ("--budget", "--nir", "--energy", "--latency", "--seeds"):
        table.add_argument(flag, action="store_true", help=f"the {flag[2:]} table (default: accuracy)")
    parser.add_argument(
        "--methods", nargs="+", type=Name(), help="only these rows of the accuracy table (default: every row)"
    )
    parser.add_argument("runs", nargs="+", type=results_directory, help="finished runs (holding results.json)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = args.runs
    if args.methods:
        known = {name for path in paths for name in load_results(path)["snn"]}
        unknown = [name for name in args.methods if name not in known]
        if unknown:
            parser.error(f"--methods {' '.join(unknown)}: no such row in these runs (rows: {', '.join(sorted(known))})")
    if args.seeds:
        print(
            "| data | net | seeds | method | ANN | " + " | ".join(f"T={t} (total)" for t in STEPS) + " | ψ=0 at T=L |"
        )
        print("|---|---|---|---|---|" + "---|" * len(STEPS) + "---|")
        try:
            print("\n".join(seed_rows(paths, args.methods)))
        except RunError as error:
            parser.error(str(error))
        return
    if args.nir and not all((path / "nir.json").is_file() for path in paths):
        parser.error("--nir needs nir.json in every run (python -m experiments.nir_export --workdir RUN)")
    if args.budget:
        print("\n".join(budget_tables(paths)))
        return
    if args.latency:
        for path in paths:
            try:
                ticks = load_latency(path)
            except RunError as error:
                parser.error(str(error))
            if ticks is None:
                parser.error(f"{path} has no latency ticks: python -m experiments.latency --workdir {path}")
            print(latency_markdown(load_results(path), ticks))
        return
    if args.nir:
        print("| data / net | method | run | " + " | ".join(f"T={t}" for t in STEPS) + " |")
        print("|---|---|---|" + "---|" * len(STEPS))
        try:
            lines = [line for path in paths for line in nir_rows(Path(path))]
        except RunError as error:
            parser.error(str(error))
        print("\n".join(lines))
        return
    if args.energy:
        header = " | ".join(f"T={t}: acc. / M synops / µJ" for t in STEPS)
        print(f"| data / net | method | ANN: acc. / M MACs / µJ | {header} | pre-simulation share at T_max |")
        print("|---|---|---|" + "---|" * len(STEPS) + "---|")
        for path in paths:
            print("\n".join(energy_rows(Path(path))))
        return
    print("| data | net | method | ANN | " + " | ".join(f"T={t} (total)" for t in STEPS) + " | ψ=0 at T=L | MSE |")
    print("|---|---|---|---|" + "---|" * len(STEPS) + "---|---|")
    for path in paths:
        print("\n".join(rows(Path(path), args.methods)))


if __name__ == "__main__":
    main()
