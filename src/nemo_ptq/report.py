"""The variants of params.yaml side by side: a summary table, the Pareto fronts and their plot.

Reads metrics/fp32.json and metrics/<variant>.json for exactly the variants in params.yaml; the
y axis is the pooled WER over every eval set (metrics key `wer`), the x axis either the median
batch-1 latency (lower is better) or the server throughput, `rtfx_best`: the highest RTFx over
the batch sizes and stream counts that keep batch 1's transcripts (higher is better). One front
and one panel each. Every row must have been measured on the model and eval sets that data/model and
data/prepared hold now (see nemo_ptq.provenance): a requested row from elsewhere is an error, not
a row left out, since a table silently missing a variant misleads as much as a mixed one.
Metrics files of variants no longer in params.yaml are not shown, and the report says so.

Latency is compared only within one machine: each row has a `hardware` column (CPU model, core
identity and threads, from the metrics' `system`), and the fronts and the plot rank only the rows
measured on FP32's hardware. A row from other hardware (a cached evaluate from another machine, a
sweep point run elsewhere) stays in the table, marked as not ranked, and the report says which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nemo_ptq import provenance
from nemo_ptq.data.prepared import PreparedData
from nemo_ptq.errors import DataError

FP32 = "fp32"
COLUMNS = (
    "variant", "backend", "wer", "cer", "wer_vs_fp32", "latency_ms_median", "latency_ms_p90",
    "speedup_vs_fp32", "size_mb", "size_ratio_vs_fp32", "int8_weight_layer_fraction", "int8_weight_mac_fraction",
    "waveform_agreement", "rtfx_best", "rtfx_best_setting", "batch_agreement", "model", "eval_sets", "hardware",
    "skipped",
)
RTFX = "rtfx_batch"  # + batch size: the throughput columns, after COLUMNS (their batch sizes come from params)
STREAMS = "rtfx_streams"  # + number of streams
BEST = "rtfx_best"  # the highest RTFx of a batch size or stream count that keeps batch 1's transcripts


@dataclass(frozen=True)
class Speed:
    """An x axis of the Pareto plot: a row's column and which way is faster."""

    key: str
    higher_is_better: bool
    label: str


LATENCY = Speed("latency_ms_median", False, "median latency, batch 1 (ms, log scale)")
SHORT = 12  # hex digits of a sha256 shown in rows


@dataclass(frozen=True)
class Inputs:
    """What every row must have been measured on: the model file and the eval sets, by hash."""

    model_sha256: str
    eval_sets: list[dict]

    @classmethod
    def current(cls, model_file: Path, prepared_dir: Path) -> "Inputs":
        return cls(provenance.model_sha256(model_file), provenance.eval_sets(PreparedData.load(prepared_dir)))


def load_metrics(folder: Path, variants: Sequence[str], inputs: Inputs,
                 stages: Mapping[str, str] | None = None) -> tuple[list[dict], list[Path]]:
    """FP32's and each variant's metrics, in that order, and the metrics files left out; `stages`
    names the stage that makes a row when it is not evaluate@<row> (the accuracy searches' rows)."""
    folder = Path(folder)
    names = [FP32, *variants]
    found = []
    for name in names:
        path = folder / f"{name}.json"
        stage = "evaluate-fp32" if name == FP32 else (stages or {}).get(name, f"evaluate@{name}")
        if not path.is_file():
            raise DataError(f"{path} is missing: run dvc repro {stage}")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("variant") != name:
            raise DataError(f"{path} is not the evaluate metrics of {name!r}: run dvc repro {stage}")
        mismatch = _mismatch(data, inputs)
        if mismatch:
            raise DataError(f"{path} was measured on {mismatch}: run dvc repro {stage}")
        found.append(data)
    left_out = [p for p in sorted(folder.glob("*.json")) if p.stem not in names]
    return found, left_out


def _mismatch(metrics: dict, inputs: Inputs) -> str:
    """'' if `metrics` was measured on `inputs`, else what differs, in words."""
    differences = []
    sha = (metrics.get("model") or {}).get("nemo_sha256")
    if sha != inputs.model_sha256:
        differences.append(f"another model (model.nemo sha256 {_short(sha)}, now {_short(inputs.model_sha256)})")
    then = {s.get("name"): s.get("sha256") for s in metrics.get("eval_sets") or []}
    now = {s["name"]: s["sha256"] for s in inputs.eval_sets}
    if list(then) != list(now):
        differences.append(f"other eval sets ({', '.join(map(str, then)) or 'none recorded'}; now {', '.join(now)})")
    else:
        changed = [name for name in now if then[name] != now[name]]
        if changed:
            differences.append(f"other contents of eval set {', '.join(changed)}")
    return " and ".join(differences)


def _short(sha: str | None) -> str:
    return "none recorded" if not sha else sha[:SHORT]


def throughput_columns(metrics: list[dict]) -> list[str]:
    """The rtfx_batch<b> then rtfx_streams<n> columns that any row has, by number."""
    keys = {key for m in metrics for key in m if key.startswith((RTFX, STREAMS))}

    def order(key: str) -> tuple[int, int]:
        streams = key.startswith(STREAMS)
        return int(streams), int(key[len(STREAMS if streams else RTFX):])

    return sorted(keys, key=order)


def hardware(metrics: dict) -> str:
    """Where a row's latency was measured: CPU model and cores, and the threads the stage used."""
    system = metrics.get("system") or {}
    machine = system.get("hardware") or system.get("cpu") or "unknown CPU"  # older files: the model name only
    threads = system.get("threads") or (metrics.get("latency") or {}).get("threads")
    return f"{machine}, {threads} threads" if threads else machine


def summary_rows(metrics: list[dict]) -> list[dict]:
    """One row per metrics file; `model`, `eval_sets` and `hardware` say what it was measured on."""
    columns = [*COLUMNS, *throughput_columns(metrics)]
    return [
        {
            **{column: m.get(column) for column in columns},
            "model": f"{m['model'].get('source')} ({_short(m['model'].get('nemo_sha256'))})",
            "eval_sets": ", ".join(f"{s['name']} ({_short(s['sha256'])})" for s in m["eval_sets"]),
            "hardware": hardware(m),
        }
        for m in metrics
    ]


def split_by_hardware(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows measured on FP32's hardware, the others): only the first are ranked against each other."""
    reference = next((r["hardware"] for r in rows if r["variant"] == FP32), rows[0]["hardware"] if rows else None)
    same = [r for r in rows if r["hardware"] == reference]
    return same, [r for r in rows if r["hardware"] != reference]


def throughput_speed(rows: list[dict]) -> Speed | None:
    """rtfx_best (the highest RTFx that keeps batch 1's transcripts) when every measured row has it."""
    measured = [r for r in rows if r["wer"] is not None]
    if not measured or any(r.get(BEST) is None for r in measured):
        return None
    return Speed(BEST, True, "best RTFx that keeps batch-1 transcripts (audio s / compute s, log scale)")


def pareto_front(rows: list[dict], speed: Speed = LATENCY) -> list[str]:
    """Variants that no other variant beats on both speed and WER (ties do not dominate), fastest first."""
    sign = -1 if speed.higher_is_better else 1
    scored = [(r, sign * r[speed.key]) for r in rows if r["wer"] is not None and r.get(speed.key) is not None]

    def dominates(a: tuple[dict, float], b: tuple[dict, float]) -> bool:
        (ra, ta), (rb, tb) = a, b
        return ra["wer"] <= rb["wer"] and ta <= tb and (ra["wer"] < rb["wer"] or ta < tb)

    front = [item for item in scored if not any(dominates(other, item) for other in scored)]
    return [r["variant"] for r, _ in sorted(front, key=lambda item: item[1])]


def plot_points(rows: list[dict], front: list[str], throughput: Speed | None = None,
                throughput_front: Sequence[str] = ()) -> list[dict]:
    """The plotted points as records, for `dvc plots` (scatter: x=latency_ms_median or rtfx, y=wer or wer_pct)."""
    return [
        {
            "variant": r["variant"],
            "latency_ms_median": r["latency_ms_median"],
            "rtfx": None if throughput is None else r.get(throughput.key),
            "wer": r["wer"],
            "wer_pct": None if r["wer"] is None else round(100 * r["wer"], 4),
            "size_mb": r["size_mb"],
            "pareto": r["variant"] in front,
            "pareto_rtfx": r["variant"] in throughput_front,
        }
        for r in rows
    ]


def markdown_table(rows: list[dict]) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "–"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    columns = [c for c in rows[0] if c in COLUMNS or c.startswith((RTFX, STREAMS))] if rows else list(COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def caption(metrics: list[dict]) -> str:
    """What the WER axis means: which kinds of speech, and whether the model was trained at all."""
    kinds = sorted({s["kind"] for m in metrics for s in m.get("sets", {}).values()})
    untrained = any(m.get("model", {}).get("trained") is False for m in metrics)
    note = " — random weights: WER is noise" if untrained else ""
    return f"WER over {' + '.join(kinds) or 'no'} speech{note}"


def plot_pareto(points: list[dict], path: Path, title: str, throughput: Speed | None = None) -> None:
    """One panel per speed axis: batch-1 latency, and RTFx when the rows measured it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [(LATENCY, "latency_ms_median", "pareto")]
    if throughput is not None:
        panels.append((throughput, "rtfx", "pareto_rtfx"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), dpi=120, squeeze=False)
    for ax, (speed, x, on_front) in zip(axes[0], panels):
        _panel(ax, [p for p in points if p["wer_pct"] is not None and p[x] is not None], speed, x, on_front)
    fig.suptitle(title, fontsize=9)
    fig.text(0.99, 0.01, "marker area ∝ model size (MB); ★ = NeMo FP32", ha="right", fontsize=7, color="dimgray")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _panel(ax, drawable: list[dict], speed: Speed, x: str, on_front: str) -> None:
    largest = max((p["size_mb"] for p in drawable), default=1.0) or 1.0
    for p in drawable:
        is_fp32 = p["variant"] == FP32
        ax.scatter(
            p[x], p["wer_pct"], s=40 + 460 * p["size_mb"] / largest, alpha=0.75,
            color="tab:red" if is_fp32 else ("tab:blue" if p[on_front] else "tab:gray"),
            marker="*" if is_fp32 else "o", edgecolor="black", linewidth=0.5, zorder=3,
        )
        ax.annotate(p["variant"], (p[x], p["wer_pct"]), textcoords="offset points", xytext=(6, 6),
                    fontsize=8, fontweight="bold" if is_fp32 else "normal")
    front = sorted((p for p in drawable if p[on_front]), key=lambda p: p[x])
    if len(front) > 1:
        ax.step([p[x] for p in front], [p["wer_pct"] for p in front], where="pre" if speed.higher_is_better else "post",
                color="tab:blue", linestyle="--", linewidth=1, label="Pareto front", zorder=2)
        ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(speed.label)
    ax.set_ylabel("WER (%)")
    ax.grid(True, which="both", alpha=0.3)
