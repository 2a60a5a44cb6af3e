"""analyze-accessibility: colour pairs that collapse under simulated dichromacy score lower."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from agents.policy.rules import make_vocabulary
from processors import registry
from processors.registry import ProcessorError, TaskInput
from processors.tasks import analyze_accessibility as aa
from tests.support.processors import rule_holds, run

TASK = "analyze-accessibility"
RED, GREEN = (200, 60, 40), (80, 150, 40)  # about the same lightness: deuteranopes see one hue
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)


def halves(left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    im = Image.new("RGB", (256, 192), left)
    ImageDraw.Draw(im).rectangle((128, 0, 256, 192), fill=right)
    return im


def pie(colours: list[tuple[int, int, int]]) -> Image.Image:
    im = Image.new("RGB", (256, 256), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for k, c in enumerate(colours):
        draw.pieslice((16, 16, 240, 240), k * 360 / len(colours), (k + 1) * 360 / len(colours),
                      fill=c)
    return im


def _run(img: Image.Image) -> dict[str, object]:
    return run(TASK, TaskInput(properties={}, image=img))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def test_red_green_collapses_blue_orange_does_not() -> None:
    rg, bo = _run(halves(RED, GREEN)), _run(halves(BLUE, ORANGE))
    json.dumps(rg)
    assert rg["colorblind_accessibility_score"] < 0.3 < 0.8 < bo["colorblind_accessibility_score"]
    analysis = rg["colorblind_accessibility_analysis"]
    assert isinstance(analysis, dict)
    assert analysis["distinct_colors"] < 0.4 and analysis["distinct_edges"] < 0.2
    assert sorted(analysis["most_indistinct_pair"]) == sorted([_hex(RED), _hex(GREEN)])
    worst = rg["most_indistinct"]
    assert isinstance(worst, dict) and worst["deficiency"] == "deuteranopia"
    assert worst["delta_e"] > 50 > 5 > worst["delta_e_simulated"]
    by = rg["by_deficiency"]
    assert isinstance(by, dict)
    assert by["tritanopia"]["distinct_colors"] == 1.0  # red/green stays distinct for tritanopes
    assert bo["colorblind_accessibility_analysis"]["distinct_colors"] == 1.0  # type: ignore[index]


def test_pie_chart_red_green_against_a_colourblind_safe_palette() -> None:
    """Okabe & Ito's palette (designed for colour-blind readers) against red/green/blue."""
    okabe_ito = [(213, 94, 0), (0, 158, 115), (230, 159, 0), (86, 180, 233)]
    bad = [(220, 50, 32), (60, 170, 60), (255, 255, 255), (40, 40, 200)]
    safe, unsafe = _run(pie(okabe_ito)), _run(pie(bad))
    assert unsafe["colorblind_accessibility_score"] < safe["colorblind_accessibility_score"]
    assert sorted(unsafe["colorblind_accessibility_analysis"]["most_indistinct_pair"]) == sorted(  # type: ignore[index]
        [_hex((220, 50, 32)), _hex((60, 170, 60))])


def test_single_colour_and_greys() -> None:
    flat = _run(Image.new("RGB", (64, 64), (90, 120, 200)))
    assert flat["colorblind_accessibility_score"] == 1.0
    assert flat["colorblind_accessibility_analysis"]["most_indistinct_pair"] is None  # type: ignore[index]
    greys = _run(halves((40, 40, 40), (220, 220, 220)))  # lightness survives every deficiency
    assert greys["colorblind_accessibility_score"] > 0.99


def test_machado_matrices_and_ciede2000() -> None:
    """Rows of a simulation matrix sum to 1 (white stays white); CIEDE2000 against Sharma, Wu &
    Dalal's published test pairs."""
    for m in aa.MACHADO_2009.values():
        assert np.allclose(m.sum(axis=1), 1.0, atol=1e-5)
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
             ((50, 2.5, 0), (73, 25, -18), 27.1492),
             ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
             ((22.7233, 20.0904, -46.694), (23.0331, 14.973, -42.5619), 2.0373),
             ((50, 2.5, 0), (50, 3.2972, 0), 1.0)]
    for a, b, expected in pairs:
        got = float(aa.ciede2000(np.array(a, float), np.array(b, float)))
        assert got == pytest.approx(expected, abs=1e-4)


def test_registration_rules_info() -> None:
    proc = registry.get(TASK)
    make_vocabulary(proc.rule_properties)
    assert proc.input == registry.InputSpec(kind="image", max_side=aa.MAX_SIDE, mode="RGB")
    rg = _run(halves(RED, GREEN))
    assert rule_holds(TASK, "colorblind accessibility score is smaller than 0.5", rg)
    assert rule_holds(TASK, "distinct colors is smaller than 0.5", rg)
    assert not rule_holds(TASK, "distinct edges is larger than 0.5", rg)
    assert proc.info_of(rg) == {"colorblind_accessibility_score":
                                rg["colorblind_accessibility_score"]}
    with pytest.raises(ProcessorError) as exc:
        run(TASK, TaskInput(properties={}))
    assert exc.value.permanent
    with pytest.raises(ValueError):
        proc.parse_params({"colors": 1})
