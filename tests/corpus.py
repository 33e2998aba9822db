"""A small corpus of distinct real texts and queries with one right answer each.

Used by the search tests and the W7 benchmark. Each document is about one topic, written
so that no two share a theme; each query names its document's topic in other words, sharing
at most a word or two with it, so that ranking has to work for the right answer.
"""

from __future__ import annotations

from typing import Final

DOCUMENTS: Final[dict[str, str]] = {
    "bees": (
        "Honeybees communicate the location of flowers through the waggle dance. A forager "
        "returning to the hive walks a figure-eight pattern; the angle of the straight run "
        "relative to vertical encodes the direction of the food source relative to the sun, "
        "and the duration of the run encodes the distance.\n\n"
        "Colonies can recruit hundreds of workers to a rich patch of clover within an hour."
    ),
    "sourdough": (
        "A sourdough starter is a culture of wild yeast and lactic acid bacteria living in "
        "flour and water. Bakers feed it daily, discarding part of it, and use it to leaven "
        "bread instead of commercial yeast. The long fermentation gives the loaf its sour "
        "taste, an open crumb and a crust that stays crisp for days."
    ),
    "volcano": (
        "Mount Etna on Sicily is one of the most active volcanoes in the world. Its eruptions "
        "produce lava fountains and ash clouds that close the airport at Catania. Farmers "
        "grow grapes and pistachios on its slopes because weathered volcanic rock makes "
        "unusually fertile soil."
    ),
    "tides": (
        "Ocean tides are caused mainly by the gravitational pull of the Moon, with a smaller "
        "contribution from the Sun. Most coasts see two high waters a day. Spring tides, with "
        "the largest range, occur at new and full moon when the Sun and Moon line up."
    ),
    "chess": (
        "In chess, castling is the only move in which two pieces move at once: the king "
        "travels two squares toward a rook, and the rook jumps over to the square beside it. "
        "It is not allowed when the king is in check or has already moved."
    ),
    "photosynthesis": (
        "Photosynthesis converts light energy into chemical energy. In the chloroplasts of "
        "leaves, chlorophyll absorbs red and blue light; water is split, releasing oxygen, "
        "and carbon dioxide is fixed into sugars in the Calvin cycle."
    ),
    "bicycle": (
        "To fix a flat bicycle tyre, remove the wheel, lever the tyre off the rim and pull out "
        "the inner tube. Pump it up and listen for the hiss, or dip it in water to find the "
        "bubbles; roughen the area, apply a patch with rubber cement, and check the tyre for "
        "the thorn that caused the puncture."
    ),
    "jazz": (
        "Bebop emerged in New York in the 1940s, when musicians such as Charlie Parker and "
        "Dizzy Gillespie played fast tempos, complex chord changes and long improvised "
        "solos in small clubs on 52nd Street, turning swing dance music into music for "
        "listening."
    ),
    "tax": (
        "The annual income tax return must be filed by the end of April. Keep receipts for "
        "deductible expenses such as childcare, charitable donations and the home office; "
        "late filing is charged interest and a penalty on the amount owed."
    ),
    "glacier": (
        "The Aletsch glacier in the Swiss Alps has lost more than three kilometres of its "
        "length since the middle of the nineteenth century. Warmer summers melt the ice "
        "faster than winter snowfall can replace it, and the meltwater feeds the Rhone."
    ),
}

QUERIES: Final[dict[str, str]] = {
    "how do bees tell each other where the flowers are": "bees",
    "baking bread with a wild yeast culture": "sourdough",
    "eruption of an active volcano in Italy": "volcano",
    "why the sea rises and falls with the moon": "tides",
    "special move of the king and rook": "chess",
    "how plants turn sunlight into sugar": "photosynthesis",
    "repairing a puncture in a bike tube": "bicycle",
    "Charlie Parker and the birth of modern jazz": "jazz",
    "deadline for filing income taxes and penalties": "tax",
    "melting ice in the Alps": "glacier",
}
