"""Plots drawn on the server as inline SVG: bars, a confusion matrix, ROC curves and paired histograms.

Every plot has labelled axes with units, a legend when it shows more than one series, a <title> for screen
readers, and colours from one palette that keeps a 3:1 contrast against the white page. Nothing is fetched
by the browser: the page carries the plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f5fa8", "#b34700", "#2d7a2d", "#8a2be2", "#a3153a", "#006d75", "#5c5c00", "#4b4b4b")
# Line styles (SVG stroke-dasharray, "" solid): lines are told apart by style as well as colour.
DASHES = ("", "8 4", "2 3", "8 3 2 3", "14 4", "4 4", "1 6", "12 3 2 3 2 3")
REFERENCE_GREY = "#777"
LEGEND_ROW = 18
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'
_CHAR_WIDTH = 7  # about a 12 px sans-serif character: room for legend names


@dataclass(frozen=True)
class Style:
    """How one series is drawn and shown in its legend: a colour, and a dash pattern for a line (None: a
    filled swatch, for bars)."""

    colour: str
    dash: str | None = ""


def line_style(index: int) -> Style:
    """The ``index``-th line of a plot: the palette's colours, then each again with the next dash."""
    return Style(PALETTE[index % len(PALETTE)], DASHES[(index // len(PALETTE)) % len(DASHES)])


def _dash(style: Style) -> str:
    return f' stroke-dasharray="{style.dash}"' if style.dash else ""


def _text(x: float, y: float, content: str, *, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT} {extra}>{escape(content)}</text>'


def _label(x: float, y: float, content: str, limit: int, *, anchor: str = "middle", extra: str = "") -> str:
    """A text of at most ``limit`` characters (cut ones end in an ellipsis) with the whole as its tooltip."""
    shown = content if len(content) <= limit else content[: limit - 1] + "…"
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT} {extra}>'
        f"<title>{escape(content)}</title>{escape(shown)}</text>"
    )


def _open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    )


def _legend(entries: Sequence[tuple[str, Style]], x: float, y: float) -> str:
    """A swatch and name per entry, each drawn with its own style: a short line for a line, a square for
    bars."""
    parts = ['<g class="legend">']
    for index, (name, style) in enumerate(entries):
        top = y + index * LEGEND_ROW
        if style.dash is None:
            swatch = f'<rect x="{x:.1f}" y="{top:.1f}" width="12" height="12" fill="{style.colour}"/>'
        else:
            swatch = (
                f'<line x1="{x - 8:.1f}" y1="{top + 6:.1f}" x2="{x + 14:.1f}" y2="{top + 6:.1f}" '
                f'stroke="{style.colour}" stroke-width="3"{_dash(style)}/>'
            )
        parts.append(swatch)
        parts.append(_text(x + 20, top + 10, name, anchor="start"))
    parts.append("</g>")
    return "".join(parts)


def _legend_size(names: Sequence[str], top: float) -> tuple[int, int]:
    """The width and the bottom a legend of ``names`` starting at ``top`` needs."""
    width = 40 + _CHAR_WIDTH * max((len(name) for name in names), default=0)
    return width, int(top + len(names) * LEGEND_ROW + 10)


def _axes(
    left: float, top: float, width: float, height: float, x_label: str, y_label: str, *, label_gap: float = 36
) -> str:
    bottom = top + height
    return (
        f'<line x1="{left}" y1="{bottom}" x2="{left + width}" y2="{bottom}" stroke="#222"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#222"/>'
        + _text(left + width / 2, bottom + label_gap, x_label)
        + _text(
            left - 42,
            top + height / 2,
            y_label,
            extra=f'transform="rotate(-90 {left - 42} {top + height / 2})"',
        )
    )


def _unit_ticks(left: float, top: float, width: float, height: float, *, x: bool) -> str:
    """Ticks at 0, 0.25, ... 1 on the y axis, and on the x axis when ``x``."""
    parts = []
    for step in range(5):
        value = step / 4
        y = top + height - value * height
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#222"/>')
        parts.append(_text(left - 8, y + 4, f"{value:.2f}", anchor="end"))
        if x:
            px = left + value * width
            bottom = top + height
            parts.append(f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 4}" stroke="#222"/>')
            parts.append(_text(px, bottom + 18, f"{value:.2f}"))
    return "".join(parts)


def probability_bars(probabilities: dict[str, float], *, title: str = "Class probabilities") -> str:
    """Horizontal bars, one per class, on a 0 to 1 probability axis."""
    longest = max((len(label) for label in probabilities), default=0)
    left, top, width = min(320, max(140, 16 + _CHAR_WIDTH * longest)), 20, 360
    row = 26
    height = row * len(probabilities)
    parts = [_open(left + width + 60, top + height + 60, title)]
    for index, (label, value) in enumerate(probabilities.items()):
        y = top + index * row + 4
        parts.append(
            f'<rect x="{left}" y="{y}" width="{max(0.0, min(1.0, value)) * width:.1f}" height="{row - 8}" '
            f'fill="{PALETTE[0]}"><title>{escape(label)}: {value:.3f}</title></rect>'
        )
        parts.append(_label(left - 8, y + row / 2, label, 44, anchor="end"))
        parts.append(_text(left + min(1.0, value) * width + 6, y + row / 2, f"{value:.3f}", anchor="start"))
    bottom = top + height
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + width}" y2="{bottom}" stroke="#222"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#222"/>')
    for step in range(5):
        x = left + step / 4 * width
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#222"/>')
        parts.append(_text(x, bottom + 18, f"{step / 4:.2f}"))
    parts.append(_text(left + width / 2, bottom + 40, "probability (0 to 1)"))
    parts.append("</svg>")
    return "".join(parts)


def confusion_matrix(classes: Sequence[str], matrix: Sequence[Sequence[int]], *, title: str) -> str:
    """Cells shaded by their share of the true class's rows, each labelled with its count."""
    cell = max(36, min(64, 320 // max(1, len(classes))))
    left, top = 130, 30
    size = cell * len(classes)
    parts = [_open(left + size + 30, top + size + 110, title)]
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            # Light to mid blue: dark counts keep at least 5:1 contrast on every shade (white would not).
            shade = int(255 - share * 190)
            fill = f"rgb({shade},{shade + (255 - shade) // 3},255)"
            ink = "#111"
            x, y = left + j * cell, top + i * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff">'
                f"<title>true {escape(classes[i])}, predicted {escape(classes[j])}: {count}</title></rect>"
            )
            parts.append(_text(x + cell / 2, y + cell / 2 + 4, str(count), extra=f'fill="{ink}"'))
    for index, label in enumerate(classes):
        parts.append(_text(left - 8, top + index * cell + cell / 2 + 4, label, anchor="end"))
        parts.append(_text(left + index * cell + cell / 2, top + size + 18, label))
    parts.append(_text(left + size / 2, top + size + 42, "predicted class (rows of the holdout)"))
    parts.append(_text(left - 8, top - 10, "true class", anchor="end"))
    parts.append("</svg>")
    return "".join(parts)


def roc_curves(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    title: str,
    styles: Sequence[Style] | None = None,
) -> str:
    """ROC curves (name, false positive rates, true positive rates) on one plot, with the chance line;
    ``styles`` gives each curve's (default: ``line_style`` in order). The plot grows with its legend."""
    styles = list(styles) if styles is not None else [line_style(i) for i in range(len(curves))]
    chance = Style(REFERENCE_GREY, "4 4")
    entries = [
        *((name, style) for (name, _, _), style in zip(curves, styles, strict=True)),
        ("chance", chance),
    ]
    left, top, width, height = 70, 20, 320, 320
    legend_width, legend_bottom = _legend_size([name for name, _ in entries], top + 10)
    parts = [_open(left + width + 40 + legend_width, max(top + height + 60, legend_bottom), title)]
    parts.append(_unit_ticks(left, top, width, height, x=True))
    parts.append(_axes(left, top, width, height, "false positive rate", "true positive rate"))
    parts.append(
        f'<line x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top}" stroke="{chance.colour}"'
        f"{_dash(chance)}/>"
    )
    for (name, fpr, tpr), style in zip(curves, styles, strict=True):
        points = " ".join(
            f"{left + x * width:.1f},{top + height - y * height:.1f}" for x, y in zip(fpr, tpr, strict=True)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{style.colour}" stroke-width="2"{_dash(style)}>'
            f"<title>{escape(name)}</title></polyline>"
        )
    parts.append(_legend(entries, left + width + 30, top + 10))
    parts.append("</svg>")
    return "".join(parts)


def paired_histogram(
    bins: Sequence[str], reference: Sequence[float], current: Sequence[float], *, title: str
) -> str:
    """Reference and current shares per bin, side by side, on a 0 to 1 share axis."""
    left, top, height = 70, 20, 180
    group = max(24, min(60, 480 // max(1, len(bins))))
    width = group * len(bins)
    peak = max([*reference, *current, 0.0]) or 1.0
    parts = [_open(left + width + 150, top + height + 100, title)]
    for step in range(5):
        value = peak * step / 4
        y = top + height - step / 4 * height
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#222"/>')
        parts.append(_text(left - 8, y + 4, f"{value:.2f}", anchor="end"))
    parts.append(
        _axes(
            left, top, width, height, "bin (feature value range or category)", "share of rows", label_gap=72
        )
    )
    for index, label in enumerate(bins):
        for series, values in enumerate((reference, current)):
            value = values[index] if index < len(values) else 0.0
            bar = value / peak * height
            x = left + index * group + 2 + series * (group - 4) / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{top + height - bar:.1f}" width="{(group - 4) / 2:.1f}" '
                f'height="{bar:.1f}" fill="{PALETTE[series]}">'
                f"<title>{escape(label)}: {value:.3f}</title></rect>"
            )
        x = left + index * group + group / 2
        parts.append(
            _label(x, top + height + 14, label, 16, extra=f'transform="rotate(30 {x} {top + height + 14})"')
        )
    bars = [("reference", Style(PALETTE[0], None)), ("current", Style(PALETTE[1], None))]
    parts.append(_legend(bars, left + width + 16, top + 10))
    parts.append("</svg>")
    return "".join(parts)


def counts_over_time(
    buckets: Sequence[str], series: dict[str, Sequence[int]], *, title: str, y_label: str
) -> str:
    """One line per series over time buckets (ISO start times), on a count axis from zero."""
    left, top, width, height = 70, 20, 560, 200
    peak = max([max(values, default=0) for values in series.values()] + [1])
    step_x = width / max(1, len(buckets) - 1)
    legend_width, legend_bottom = _legend_size(list(series), top + 10)
    parts = [_open(left + width + 20 + legend_width, max(top + height + 70, legend_bottom), title)]
    for step in range(5):
        value = peak * step / 4
        y = top + height - step / 4 * height
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#222"/>')
        parts.append(_text(left - 8, y + 4, f"{value:.0f}" if peak >= 4 else f"{value:.1f}", anchor="end"))
    parts.append(_axes(left, top, width, height, "bucket start (UTC)", y_label))
    parts.append(_time_ticks(buckets, left, top + height, step_x))
    for index, (name, values) in enumerate(series.items()):
        points = " ".join(
            f"{left + i * step_x:.1f},{top + height - value / peak * height:.1f}"
            for i, value in enumerate(values)
        )
        style = line_style(index)
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{style.colour}" stroke-width="2"{_dash(style)}>'
            f"<title>{escape(name)}</title></polyline>"
        )
    parts.append(
        _legend([(name, line_style(i)) for i, name in enumerate(series)], left + width + 16, top + 10)
    )
    parts.append("</svg>")
    return "".join(parts)


def _time_ticks(buckets: Sequence[str], left: float, bottom: float, step_x: float) -> str:
    """Every sixth bucket's start (and the last) under the x axis, as MM-DD HH:MM."""
    parts = []
    for index, bucket in enumerate(buckets):
        if index % 6 == 0 or index == len(buckets) - 1:
            x = left + index * step_x
            parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#222"/>')
            parts.append(_text(x, bottom + 16, bucket[5:16].replace("T", " ")))
    return "".join(parts)


def rates_over_time(
    buckets: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    y_label: str,
    line: tuple[str, float] | None = None,
) -> str:
    """Values from 0 to 1 over time buckets, one line per series with a dot per bucket that has a value
    (a bucket without one leaves a gap); ``line`` is a labelled dashed level, such as an alert gate."""
    left, top, width, height = 70, 20, 560, 200
    step_x = width / max(1, len(buckets) - 1)
    names = [*series, *([line[0]] if line is not None else [])]
    legend_width, legend_bottom = _legend_size(names, top + 10)
    parts = [_open(left + width + 20 + legend_width, max(top + height + 70, legend_bottom), title)]
    parts.append(_unit_ticks(left, top, width, height, x=False))
    parts.append(_axes(left, top, width, height, "bucket start (UTC)", y_label))
    parts.append(_time_ticks(buckets, left, top + height, step_x))
    entries = [(name, line_style(index)) for index, name in enumerate(series)]
    for index, (name, values) in enumerate(series.items()):
        style = line_style(index)
        colour = style.colour
        runs: list[list[str]] = [[]]
        for i, value in enumerate(values):
            if value is None:
                runs.append([])
                continue
            x, y = left + i * step_x, top + height - max(0.0, min(1.0, value)) * height
            runs[-1].append(f"{x:.1f},{y:.1f}")
            # every other series has hollow, larger dots: equal values stay visible one over the other
            dot = f'r="3" fill="{colour}"' if index % 2 == 0 else f'r="5" fill="none" stroke="{colour}"'
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" {dot}>'
                f"<title>{escape(name)}, {escape(buckets[i])}: {value:.3f}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                parts.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"'
                    f"{_dash(style)}><title>{escape(name)}</title></polyline>"
                )
    if line is not None:
        label, level = line
        y = top + height - max(0.0, min(1.0, level)) * height
        level_style = Style(REFERENCE_GREY, "4 4")
        parts.append(
            f'<line class="level" x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" '
            f'stroke="{level_style.colour}"{_dash(level_style)}>'
            f"<title>{escape(label)}: {level:.3f}</title></line>"
        )
        entries.append((label, level_style))
    parts.append(_legend(entries, left + width + 16, top + 10))
    parts.append("</svg>")
    return "".join(parts)
