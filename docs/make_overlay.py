"""Compose docs/overlay.png, the README's picture: the bundled examples above their outlines.

    python predict.py -i examples -o /tmp/o --save-overlay
    python docs/make_overlay.py /tmp/o docs/overlay.png
"""
import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
PANELS = [("fl_cells.png", "fluorescence (synthetic)"), ("bf_stained.jpg", "stained (synthetic)"),
          ("gs_phase.png", "phase contrast (Usiigaci)"), ("ihc_colon.jpg", "IHC (scikit-image)")]
SIDE, GAP, CAPTION = 256, 4, 18


def main(overlays: Path, out: Path) -> None:
    width = len(PANELS) * SIDE + (len(PANELS) - 1) * GAP
    sheet = Image.new("RGB", (width, CAPTION + 2 * SIDE + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, caption) in enumerate(PANELS):
        x = i * (SIDE + GAP)
        draw.text((x + 4, 3), caption, fill="black")
        raw = Image.open(REPO / "examples" / name).convert("RGB").resize((SIDE, SIDE))
        outline = Image.open(overlays / f"{Path(name).stem}_overlay.png").convert("RGB")
        sheet.paste(raw, (x, CAPTION))
        sheet.paste(outline.resize((SIDE, SIDE)), (x, CAPTION + SIDE + GAP))
    sheet.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
