"""The console's SVG plots, read back as XML: every legend entry shows its own series' colour and line
style, no two series look alike, the chance line is grey, and the plot grows with its legend."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from modelyard.console import plots

SVG = "{http://www.w3.org/2000/svg}"


def _legend(svg: ET.Element) -> list[tuple[str, str, str]]:
    """(name, colour, dash) of each legend entry, in order."""
    legend = svg.find(f"{SVG}g[@class='legend']")
    assert legend is not None
    swatches = [e for e in legend if e.tag in (f"{SVG}line", f"{SVG}rect")]
    names = [e.text or "" for e in legend if e.tag == f"{SVG}text"]
    return [
        (name, s.get("stroke") or s.get("fill") or "", s.get("stroke-dasharray", ""))
        for name, s in zip(names, swatches, strict=True)
    ]


def test_nine_roc_curves_each_have_their_own_look_and_the_legend_says_which() -> None:
    curves = [(f"c{i}", [0.0, 0.1 * i, 1.0], [0.0, 0.5, 1.0]) for i in range(9)]
    svg = ET.fromstring(plots.roc_curves(curves, title="nine"))
    drawn = [
        (line.find(f"{SVG}title").text, line.get("stroke"), line.get("stroke-dasharray", ""))  # type: ignore[union-attr]
        for line in svg.iter(f"{SVG}polyline")
    ]
    legend = _legend(svg)
    assert legend[:-1] == drawn  # each entry is its curve's colour and style, in order
    assert legend[-1] == ("chance", plots.REFERENCE_GREY, "4 4")
    assert len({(colour, dash) for _, colour, dash in legend}) == 10  # c0 and c8 share a colour, not a style
    assert legend[0][1] == legend[8][1] and legend[0][2] != legend[8][2]
    legend_bottom = 30 + 10 * plots.LEGEND_ROW
    assert int(svg.get("height", "0")) >= legend_bottom


def test_compare_styles_give_a_colour_per_class_and_a_line_style_per_version() -> None:
    curves = [(f"v{v}: {c}", [0.0, 1.0], [0.0, 1.0]) for v in (1, 2, 3) for c in ("a", "b", "c")]
    styles = [plots.Style(plots.PALETTE[c], plots.DASHES[v]) for v in range(3) for c in range(3)]
    legend = _legend(ET.fromstring(plots.roc_curves(curves, title="compare", styles=styles)))
    by_name = {name: (colour, dash) for name, colour, dash in legend}
    assert by_name["v1: a"][0] == by_name["v3: a"][0] and by_name["v1: a"][1] != by_name["v3: a"][1]
    assert len(set(by_name.values())) == len(by_name)


def test_a_long_legend_widens_the_plot() -> None:
    short = ET.fromstring(plots.roc_curves([("a", [0, 1], [0, 1])], title="short"))
    long = ET.fromstring(plots.roc_curves([("a" * 80, [0, 1], [0, 1])], title="long"))
    assert int(long.get("width", "0")) >= int(short.get("width", "0")) + 70 * 7


def test_a_long_category_keeps_its_whole_name_as_a_tooltip() -> None:
    bins = ["category-with-a-long-common-prefix-a", "category-with-a-long-common-prefix-b"]
    svg = ET.fromstring(plots.paired_histogram(bins, [0.5, 0.5], [0.4, 0.6], title="long"))
    labels = [t for t in svg.iter(f"{SVG}text") if t.find(f"{SVG}title") is not None]
    assert [t.find(f"{SVG}title").text for t in labels] == bins  # type: ignore[union-attr]
    shown = [t.find(f"{SVG}title").tail or "" for t in labels]  # type: ignore[union-attr]
    assert shown == ["category-with-a…", "category-with-a…"]
