"""Draw the sample image the repo ships (assets/menu.png): a small café menu card.

The project draws it itself so that it carries no third-party rights and no metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ITEMS = [
    ("Espresso", "2.50"),
    ("Cappuccino", "3.20"),
    ("Croissant", "2.80"),
    ("Avocado toast", "7.90"),
    ("Tomato soup", "6.50"),
    ("Lemon tart", "4.10"),
]


def draw(path: Path) -> None:
    width, height = 480, 640
    img = Image.new("RGB", (width, height), (250, 244, 230))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=26)
    title = ImageFont.load_default(size=44)
    d.rectangle((16, 16, width - 17, height - 17), outline=(90, 60, 30), width=4)
    d.text((width // 2, 70), "CAFE MENU", font=title, fill=(90, 40, 20), anchor="mm")
    d.line((60, 110, width - 60, 110), fill=(90, 60, 30), width=2)
    for i, (name, price) in enumerate(ITEMS):
        y = 160 + i * 64
        d.text((60, y), name, font=font, fill=(40, 30, 20))
        d.text((width - 60, y), price, font=font, fill=(40, 30, 20), anchor="ra")
    # A coffee cup, so there is something to see as well as read.
    d.ellipse((190, 540, 290, 600), fill=(120, 70, 40))
    d.arc((270, 550, 310, 590), 270, 90, fill=(120, 70, 40), width=6)
    img.save(path, format="PNG", optimize=True)


if __name__ == "__main__":
    draw(Path(sys.argv[1] if len(sys.argv) > 1 else "assets/menu.png"))
