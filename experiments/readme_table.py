"""Print the README's results table from results/*/results.json (no number is typed by hand).

python experiments/readme_table.py results/fashion_mnist/small_vgg results/fashion_mnist/small_resnet
"""

import json
import sys
from pathlib import Path

STEPS = ("1", "2", "4", "8")


def rows(run: Path) -> list[str]:
    results = json.loads((run / "results.json").read_text())
    out = []
    for name, row in results["snn"].items():
        cells = " | ".join(
            f"{100 * row['accuracy'][t]:.2f} ({row['total_steps'][t]})" if t in row["accuracy"] else "—" for t in STEPS
        )
        offset = results["offset"][name]
        out.append(
            f"| {results['dataset']} | {results['arch']} | {name} | {100 * results['ann_accuracy']:.2f} | {cells} "
            f"| {100 * offset['zero_ratio']:.2f}% | {offset['mse']:.4f} |"
        )
    return out


def main(paths: list[str]) -> None:
    print("| data | net | method | ANN | " + " | ".join(f"T={t} (total)" for t in STEPS) + " | ψ=0 at T=L | MSE |")
    print("|---|---|---|---|" + "---|" * len(STEPS) + "---|---|")
    for path in paths:
        print("\n".join(rows(Path(path))))


if __name__ == "__main__":
    main(sys.argv[1:])
