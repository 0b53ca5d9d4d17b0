"""Learning curves and confusion matrices of a training run, as one PNG (the study's figures 2-3)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from pipeline.locations import write_bytes


def plot_curves(metrics: list[dict], confusions: dict[str, list[list[int]]], path: str | Path,
                class_names: Sequence[str] = ("other", "lymphoblast")) -> None:  # fmt: skip
    """Write `path` (PNG, a local path or URI): per arch, loss and accuracy (train and validation) per epoch, and the
    best epoch's N x N confusion matrix over `class_names` (rows true, columns predicted). `metrics` are
    metrics.jsonl rows (arch, epoch, train_loss, ...)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    archs = list(dict.fromkeys(m["arch"] for m in metrics))
    k = len(class_names)
    width = 4.2 if k <= 3 else 0.55 * k + 1.5
    fig, axes = plt.subplots(3, len(archs), figsize=(width * len(archs), 7 + width), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1, width / 3.5]})  # fmt: skip
    labels = ["blast" if c == "lymphoblast" else c for c in class_names]
    for col, arch in enumerate(archs):
        rows = sorted((m for m in metrics if m["arch"] == arch and m.get("fold", 0) == 0), key=lambda m: m["epoch"])
        epochs = [m["epoch"] + 1 for m in rows]
        loss_title = "loss (BCE)" if k == 2 and tuple(class_names) == ("other", "lymphoblast") else "loss (partial CE)"
        for row, (key, title) in enumerate((("loss", loss_title), ("acc", "accuracy"))):
            ax = axes[row][col]
            for side, style in (("train", "-o"), ("val", "-s")):
                values = [m.get(f"{side}_{key}") for m in rows]
                pts = [(e, v) for e, v in zip(epochs, values) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), style, markersize=3, label=side)
            ax.set_title(f"{arch}: {title}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
            if key == "acc":
                ax.set_ylim(0, 1.02)
        ax = axes[2][col]
        cm = confusions.get(arch)
        if cm:
            ax.imshow(cm, cmap="Blues")
            for i in range(len(cm)):
                for j in range(len(cm)):
                    ax.text(
                        j,
                        i,
                        str(cm[i][j]),
                        ha="center",
                        va="center",
                        fontsize=14 if k <= 3 else 8,
                        color="white" if cm[i][j] > max(map(max, cm)) / 2 else "black",
                    )
            ticks = list(range(len(cm)))
            ax.set_xticks(ticks, labels[: len(cm)], rotation=0 if k <= 3 else 60, ha="center" if k <= 3 else "right")
            ax.set_yticks(ticks, labels[: len(cm)])
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{arch}: validation, best epoch")
        else:
            ax.axis("off")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    write_bytes(path, png.getvalue())
