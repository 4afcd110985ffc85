"""Documents the tests and benches generate: ten distinct topics, each a few paragraphs of plain facts,
written out as .txt, .md, .html, .pdf (reportlab) or .docx (python-docx), at any length."""

from __future__ import annotations

from pathlib import Path

TOPICS: dict[str, list[str]] = {
    "Honeybees": [
        "A honeybee colony holds one queen, a few hundred male drones and up to sixty thousand female "
        "workers.",
        "Young workers clean cells, feed larvae and build wax comb; older workers fly out to gather nectar "
        "and pollen.",
        "A forager shows her sisters where flowers grow with the waggle dance, whose angle gives the "
        "direction and whose length gives the distance.",
        "Bees turn nectar into honey by adding enzymes and fanning their wings until most of the water "
        "has evaporated.",
        "In winter the bees cluster around the queen and shiver their flight muscles to keep her warm.",
        "The varroa mite feeds on developing bees and spreads viruses, and untreated hives often collapse "
        "within three years.",
        "Beekeepers count mites with a sugar roll and treat the hives with organic acids in late summer.",
    ],
    "Volcanoes": [
        "A volcano forms where molten rock, called magma, rises through the crust and erupts at the surface.",
        "Most volcanoes sit along the edges of tectonic plates, especially around the Pacific Ring of Fire.",
        "Runny basalt lava builds broad shield volcanoes such as Mauna Loa in Hawaii.",
        "Sticky magma rich in silica traps gas and tends to explode, as Mount St. Helens did in 1980.",
        "Pyroclastic flows of hot ash and gas race down the slopes at hundreds of kilometres per hour.",
        "Volcanologists watch for swarms of small earthquakes, swelling ground and rising sulfur dioxide "
        "before an eruption.",
        "Ash from large eruptions can cool the global climate for a year or two by blocking sunlight.",
    ],
    "Chess": [
        "Chess descends from chaturanga, a game played in India around the sixth century.",
        "The game spread through Persia to the Arab world and reached Europe by the tenth century.",
        "In the fifteenth century the queen became the strongest piece, which made games much faster.",
        "Each player starts with sixteen pieces: a king, a queen, two rooks, two bishops, two knights and "
        "eight pawns.",
        "A game ends in checkmate when the king is attacked and has no legal move to escape.",
        "Opening theory fills whole libraries, with lines such as the Sicilian Defence and the Queen's "
        "Gambit.",
        "In 1997 the computer Deep Blue beat world champion Garry Kasparov in a six-game match.",
    ],
    "Coffee": [
        "Coffee grows on shrubs of the genus Coffea in a belt of tropical countries around the equator.",
        "Arabica beans come from high mountain farms and taste sweeter, while robusta grows lower and "
        "carries more caffeine.",
        "The red fruit, called a cherry, holds two seeds that become the coffee beans.",
        "Farmers either dry the cherries whole in the sun or wash off the fruit before drying the beans.",
        "Roasting at around two hundred degrees Celsius browns the beans and creates hundreds of aroma "
        "compounds.",
        "Brazil grows the most coffee in the world, followed by Vietnam and Colombia.",
        "Coffee leaf rust, a fungus, can destroy much of a harvest in wet years.",
    ],
    "Lighthouses": [
        "Lighthouses mark dangerous coasts and harbour entrances so that ships can navigate at night.",
        "The Pharos of Alexandria, built in the third century BC, was one of the wonders of the ancient "
        "world.",
        "Augustin Fresnel designed a lens of concentric glass rings in 1822 that made the beam visible far "
        "out at sea.",
        "Every lighthouse has its own pattern of flashes, so sailors can tell one light from another.",
        "Keepers once lived at the towers to trim the wicks, wind the clockwork and polish the lenses.",
        "Today most lights are automatic, powered by electricity or solar panels and checked remotely.",
        "Many towers stand on rocks in open water and were built from interlocking granite blocks.",
    ],
    "Roman aqueducts": [
        "Roman aqueducts carried fresh water from springs in the hills to cities, baths and fountains.",
        "They relied on gravity alone, dropping only a few metres for every kilometre of channel.",
        "Most of each aqueduct ran underground in covered channels; the famous arches crossed valleys.",
        "The Aqua Appia, Rome's first aqueduct, was completed in 312 BC.",
        "At its height the city of Rome was fed by eleven aqueducts delivering hundreds of thousands of "
        "cubic metres a day.",
        "Engineers lined the channels with waterproof concrete and built settling tanks to remove grit.",
        "The Pont du Gard in southern France still stands nearly fifty metres above the river Gardon.",
    ],
    "Jazz": [
        "Jazz grew up in New Orleans in the early twentieth century from blues, ragtime and brass band "
        "music.",
        "Improvisation is at its heart: players invent melodies on the spot over the chords of a tune.",
        "Louis Armstrong's trumpet solos in the 1920s made the soloist the star of the band.",
        "Swing big bands led by Duke Ellington and Count Basie filled dance halls in the 1930s.",
        "Bebop musicians such as Charlie Parker played fast, complex lines for listeners rather than "
        "dancers.",
        "Miles Davis's album Kind of Blue, recorded in 1959, built its tunes on modes instead of chord "
        "changes.",
        "A typical jazz combo has a rhythm section of piano, double bass and drums with horns in front.",
    ],
    "Coral reefs": [
        "Coral reefs are built by colonies of tiny animals called polyps that lay down limestone skeletons.",
        "The polyps live with algae in their tissue that turn sunlight into food for the coral.",
        "Reefs cover less than one percent of the ocean floor but shelter about a quarter of marine species.",
        "The Great Barrier Reef off Australia stretches for more than two thousand kilometres.",
        "When the water grows too warm the coral expels its algae and turns white, which is called "
        "bleaching.",
        "Ocean acidification makes it harder for corals to build their skeletons.",
        "Healthy reefs protect coastlines by breaking waves before they reach the shore.",
    ],
    "Solar panels": [
        "Solar panels turn sunlight into electricity with cells made of silicon.",
        "When light strikes a cell it frees electrons, and the junction inside the cell drives them into a "
        "current.",
        "Typical modern panels convert around twenty percent of the sunlight that falls on them.",
        "An inverter changes the direct current of the panels into the alternating current used in homes.",
        "The price of solar modules fell by about ninety percent between 2010 and 2020.",
        "Panels face south in the northern hemisphere and are tilted close to the local latitude.",
        "Dust, shade and heat all reduce the output, so large farms clean their panels regularly.",
    ],
    "Marathon running": [
        "The marathon covers 42.195 kilometres, a distance fixed at the 1908 London Olympics.",
        "The race recalls the legend of a Greek messenger who ran from Marathon to Athens with news of "
        "victory.",
        "Runners train for months, building up long weekly runs and easy recovery days.",
        "Around the thirtieth kilometre many runners hit the wall as their muscles run out of glycogen.",
        "Drinking water and taking in carbohydrates during the race delays that exhaustion.",
        "Eliud Kipchoge ran the distance in under two hours in a special event in Vienna in 2019.",
        "Big city marathons such as Boston, Berlin and New York each draw tens of thousands of runners.",
    ],
}


def sections(topic: str, repeat: int = 1) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) of one topic; repeat > 1 makes a longer document by numbering parts."""
    facts = TOPICS[topic]
    paras = [" ".join(facts[:4]), " ".join(facts[4:])]
    if repeat == 1:
        return [(topic, paras)]
    return [(f"{topic}, part {i + 1}", [f"Part {i + 1}. {p}" for p in paras]) for i in range(repeat)]


def long_sections(pages: int) -> list[tuple[str, list[str]]]:
    """About `pages` pages (~500 words each) cycling through every topic."""
    out: list[tuple[str, list[str]]] = []
    names = list(TOPICS)
    i = 0
    while sum(len(" ".join(p).split()) for _, p in out) < 500 * pages:
        topic = names[i % len(names)]
        out.append(
            (f"Chapter {i + 1}: {topic}", [" ".join(TOPICS[topic]), " ".join(reversed(TOPICS[topic]))])
        )
        i += 1
    return out


def write(path: Path, parts: list[tuple[str, list[str]]], title: str = "") -> Path:
    """The sections as a document of the type path's extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.suffix.lower()
    if kind == ".txt":
        text = "\n\n".join(([title] if title else []) + [f"{h}\n\n" + "\n\n".join(ps) for h, ps in parts])
        path.write_text(text + "\n", encoding="utf-8")
    elif kind == ".md":
        text = "\n\n".join(
            ([f"# {title}"] if title else []) + [f"## {h}\n\n" + "\n\n".join(ps) for h, ps in parts]
        )
        path.write_text(text + "\n", encoding="utf-8")
    elif kind == ".html":
        body = "".join(f"<h2>{h}</h2>" + "".join(f"<p>{p}</p>" for p in ps) for h, ps in parts)
        path.write_text(
            f"<!doctype html><html><head><title>{title}</title><style>p{{color:red}}</style>"
            f"<script>var x = 'not text';</script></head><body><h1>{title}</h1>{body}</body></html>",
            encoding="utf-8",
        )
    elif kind == ".pdf":
        from reportlab.lib.styles import getSampleStyleSheet
        from reportlab.platypus import Paragraph, SimpleDocTemplate

        styles = getSampleStyleSheet()
        story = [Paragraph(title, styles["Title"])] if title else []
        for h, ps in parts:
            story.append(Paragraph(h, styles["Heading2"]))
            story.extend(Paragraph(p, styles["BodyText"]) for p in ps)
        SimpleDocTemplate(str(path)).build(story)
    elif kind == ".docx":
        import docx

        document = docx.Document()
        if title:
            document.add_heading(title, level=0)
        for h, ps in parts:
            document.add_heading(h, level=2)
            for p in ps:
                document.add_paragraph(p)
        document.save(str(path))
    else:
        raise ValueError(f"no writer for {kind}")
    return path
