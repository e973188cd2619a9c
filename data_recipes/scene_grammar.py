"""Caption grammars for the synthetic scene benchmark, one renderer per XTD10 language.

A caption renders a :class:`Description`: the background colour and a list of placed object
groups. A group is placed either in a cell of a 3x3 grid or relative to another group ("left of",
"above", ...). Every template mentions every attribute, so a caption is fully determined by the
description; templates only change the wording. Each language renders noun phrases with the
agreement its grammar needs (gender, number, case, numeral government, vowel harmony,
classifiers / counters, batchim-dependent particles).
"""
from __future__ import annotations

from dataclasses import dataclass

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "ellipse", "cross")
COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
MAX_COUNT = 5
#: Grid cells in reading order: 0 top left, 1 top, 2 top right, 3 left, 4 centre, ..., 8 bottom right.
NUM_CELLS = 9


@dataclass(frozen=True)
class Group:
    """``count`` objects of one shape, colour and size, drawn together in one grid cell."""
    shape: str
    colour: str
    size: str
    count: int = 1


@dataclass(frozen=True)
class Placed:
    """A group and where it is: a grid ``cell``, or ``relation`` to an ``anchor`` group."""
    group: Group
    cell: int | None = None
    relation: str | None = None
    anchor: Group | None = None


@dataclass(frozen=True)
class Description:
    background: str
    items: tuple[Placed, ...]


def _join(parts: list[str], conj: str, sep: str = ", ") -> str:
    """``a``, ``a conj b``, ``a, b conj c``."""
    if len(parts) == 1:
        return parts[0]
    return sep.join(parts[:-1]) + f" {conj} " + parts[-1]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


class Language:
    """Base renderer: subclasses give vocabulary, ``location`` phrases and ``templates``."""
    code: str = ""
    CELLS: tuple[str, ...] = ()
    REL: dict[str, str] = {}

    @property
    def templates(self) -> tuple:
        raise NotImplementedError

    def anchor_np(self, group: Group) -> str:
        """The noun phrase a relation governs (subclasses pick the case)."""
        return self.np(group)

    def np(self, group: Group) -> str:
        raise NotImplementedError

    def location(self, item: Placed) -> str:
        if item.relation is None:
            return self.CELLS[item.cell]
        return self.REL[item.relation].format(self.anchor_np(item.anchor))

    def render(self, desc: Description, template: int) -> str:
        return self.templates[template](desc)


# --------------------------------------------------------------------------------------- English
class English(Language):
    code = "en"
    SHAPE = {"circle": ("circle", "circles"), "square": ("square", "squares"), "triangle": ("triangle", "triangles"),
             "star": ("star", "stars"), "heart": ("heart", "hearts"), "ellipse": ("ellipse", "ellipses"),
             "cross": ("cross", "crosses")}
    NUM = {2: "two", 3: "three", 4: "four", 5: "five"}
    CELLS = ("in the top left", "at the top", "in the top right", "on the left", "in the centre", "on the right",
             "in the bottom left", "at the bottom", "in the bottom right")
    REL = {"left_of": "to the left of {}", "right_of": "to the right of {}", "above": "above {}", "below": "below {}"}

    def np(self, g: Group) -> str:
        # The size word always comes first, so the article is always "a", never "an".
        if g.count == 1:
            return f"a {g.size} {g.colour} {self.SHAPE[g.shape][0]}"
        return f"{self.NUM[g.count]} {g.size} {g.colour} {self.SHAPE[g.shape][1]}"

    def _phrases(self, d: Description) -> str:
        return _join([f"{self.np(i.group)} {self.location(i)}" for i in d.items], "and")

    @property
    def templates(self):
        return (
            lambda d: _capitalise(f"{self._phrases(d)} on a {d.background} background."),
            lambda d: f"A {d.background} background with {self._phrases(d)}.",
            lambda d: _capitalise(_join([f"there {'is' if i.group.count == 1 else 'are'} {self.np(i.group)} "
                                         f"{self.location(i)}" for i in d.items], "and")
                                  + f"; the background is {d.background}."),
        )


# ---------------------------------------------------------------------------------------- German
class German(Language):
    code = "de"
    # nominative/accusative singular, gender, dative singular, plural, dative plural
    SHAPE = {"circle": ("Kreis", "m", "Kreis", "Kreise", "Kreisen"),
             "square": ("Quadrat", "n", "Quadrat", "Quadrate", "Quadraten"),
             "triangle": ("Dreieck", "n", "Dreieck", "Dreiecke", "Dreiecken"),
             "star": ("Stern", "m", "Stern", "Sterne", "Sternen"),
             "heart": ("Herz", "n", "Herzen", "Herzen", "Herzen"),
             "ellipse": ("Ellipse", "f", "Ellipse", "Ellipsen", "Ellipsen"),
             "cross": ("Kreuz", "n", "Kreuz", "Kreuze", "Kreuzen")}
    # "lila"/"orange" do not decline in the standard language; these synonyms do.
    COLOUR = {"red": "rot", "blue": "blau", "green": "grün", "yellow": "gelb", "black": "schwarz", "white": "weiß",
              "purple": "violett", "orange": "orangefarben"}
    SIZE = {"small": "klein", "large": "groß"}
    NUM = {2: "zwei", 3: "drei", 4: "vier", 5: "fünf"}
    ARTICLE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"},
               "dat": {"m": "einem", "f": "einer", "n": "einem"}}
    # adjective endings after "ein" (mixed declension) and after a bare numeral (strong plural)
    MIXED = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"},
             "dat": {"m": "en", "f": "en", "n": "en"}}
    STRONG_PLURAL = {"nom": "e", "acc": "e", "dat": "en"}
    CELLS = ("oben links", "oben", "oben rechts", "links", "in der Mitte", "rechts", "unten links", "unten",
             "unten rechts")
    REL = {"left_of": "links von {}", "right_of": "rechts von {}", "above": "über {}", "below": "unter {}"}

    def np(self, g: Group, case: str = "nom") -> str:
        sg, gender, dat_sg, pl, dat_pl = self.SHAPE[g.shape]
        size, colour = self.SIZE[g.size], self.COLOUR[g.colour]
        if g.count == 1:
            e = self.MIXED[case][gender]
            noun = dat_sg if case == "dat" else sg
            return f"{self.ARTICLE[case][gender]} {size}{e} {colour}{e} {noun}"
        e = self.STRONG_PLURAL[case]
        return f"{self.NUM[g.count]} {size}{e} {colour}{e} {dat_pl if case == 'dat' else pl}"

    def anchor_np(self, group: Group) -> str:
        return self.np(group, "dat")  # von, über, unter (place): dative

    def _phrases(self, d: Description, case: str) -> str:
        return _join([f"{self.np(i.group, case)} {self.location(i)}" for i in d.items], "und")

    def _clause(self, i: Placed) -> str:
        verb = "ist" if i.group.count == 1 else "sind"
        return f"{self.location(i)} {verb} {self.np(i.group)}"

    @property
    def templates(self):
        return (
            lambda d: _capitalise(f"{self._phrases(d, 'nom')} auf {self.COLOUR[d.background]}em Hintergrund."),
            lambda d: f"Das Bild zeigt {self._phrases(d, 'acc')} auf {self.COLOUR[d.background]}em Hintergrund.",
            lambda d: _capitalise(f"{self.COLOUR[d.background]}er Hintergrund mit {self._phrases(d, 'dat')}."),
            lambda d: _capitalise(_join([self._clause(i) for i in d.items], "und")
                                  + f"; der Hintergrund ist {self.COLOUR[d.background]}."),
        )


# ------------------------------------------------------------------------------ Romance languages
class Romance(Language):
    """Gender/number agreement; colour after the noun; size before (fr, it) or after (es) it."""
    SHAPE: dict[str, tuple[str, str, str]] = {}   # singular, plural, gender
    COLOUR: dict[str, tuple[str, str, str, str]] = {}  # m sg, f sg, m pl, f pl
    SIZE: dict[str, tuple[str, str, str, str]] = {}
    ARTICLE: dict[str, str] = {}
    NUM: dict[int, str] = {}
    SIZE_BEFORE_NOUN = True
    CONJ = ""

    def np(self, g: Group) -> str:
        sg, pl, gender = self.SHAPE[g.shape]
        form = (0 if gender == "m" else 1) + (0 if g.count == 1 else 2)
        det = self.ARTICLE[gender] if g.count == 1 else self.NUM[g.count]
        noun = sg if g.count == 1 else pl
        size, colour = self.SIZE[g.size][form], self.COLOUR[g.colour][form]
        if self.SIZE_BEFORE_NOUN:
            return f"{det} {size} {noun} {colour}"
        return f"{det} {noun} {colour} {size}"

    def _phrases(self, d: Description) -> str:
        return _join([f"{self.np(i.group)} {self.location(i)}" for i in d.items], self.CONJ)

    def bg(self, d: Description) -> str:
        return self.COLOUR[d.background][0]


class French(Romance):
    code = "fr"
    SHAPE = {"circle": ("cercle", "cercles", "m"), "square": ("carré", "carrés", "m"),
             "triangle": ("triangle", "triangles", "m"), "star": ("étoile", "étoiles", "f"),
             "heart": ("cœur", "cœurs", "m"), "ellipse": ("ellipse", "ellipses", "f"), "cross": ("croix", "croix", "f")}
    COLOUR = {"red": ("rouge", "rouge", "rouges", "rouges"), "blue": ("bleu", "bleue", "bleus", "bleues"),
              "green": ("vert", "verte", "verts", "vertes"), "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
              "black": ("noir", "noire", "noirs", "noires"), "white": ("blanc", "blanche", "blancs", "blanches"),
              "purple": ("violet", "violette", "violets", "violettes"), "orange": ("orange",) * 4}
    SIZE = {"small": ("petit", "petite", "petits", "petites"), "large": ("grand", "grande", "grands", "grandes")}
    ARTICLE = {"m": "un", "f": "une"}
    NUM = {2: "deux", 3: "trois", 4: "quatre", 5: "cinq"}
    CONJ = "et"
    CELLS = ("en haut à gauche", "en haut", "en haut à droite", "à gauche", "au centre", "à droite",
             "en bas à gauche", "en bas", "en bas à droite")
    REL = {"left_of": "à gauche de {}", "right_of": "à droite de {}", "above": "au-dessus de {}",
           "below": "au-dessous de {}"}

    def location(self, item: Placed) -> str:
        return super().location(item).replace("de un", "d'un")  # elision: d'un, d'une

    @property
    def templates(self):
        return (
            lambda d: _capitalise(f"{self._phrases(d)}, sur fond {self.bg(d)}."),
            lambda d: f"Un fond {self.bg(d)} avec {self._phrases(d)}.",
            lambda d: f"Il y a {self._phrases(d)} ; le fond est {self.bg(d)}.",
        )


class Spanish(Romance):
    code = "es"
    SHAPE = {"circle": ("círculo", "círculos", "m"), "square": ("cuadrado", "cuadrados", "m"),
             "triangle": ("triángulo", "triángulos", "m"), "star": ("estrella", "estrellas", "f"),
             "heart": ("corazón", "corazones", "m"), "ellipse": ("elipse", "elipses", "f"),
             "cross": ("cruz", "cruces", "f")}
    COLOUR = {"red": ("rojo", "roja", "rojos", "rojas"), "blue": ("azul", "azul", "azules", "azules"),
              "green": ("verde", "verde", "verdes", "verdes"),
              "yellow": ("amarillo", "amarilla", "amarillos", "amarillas"),
              "black": ("negro", "negra", "negros", "negras"), "white": ("blanco", "blanca", "blancos", "blancas"),
              "purple": ("morado", "morada", "morados", "moradas"),
              "orange": ("naranja", "naranja", "naranjas", "naranjas")}
    # Literal size follows the noun in Spanish ("un gran círculo" would read "a great circle").
    SIZE = {"small": ("pequeño", "pequeña", "pequeños", "pequeñas"),
            "large": ("grande", "grande", "grandes", "grandes")}
    SIZE_BEFORE_NOUN = False
    ARTICLE = {"m": "un", "f": "una"}
    NUM = {2: "dos", 3: "tres", 4: "cuatro", 5: "cinco"}
    CONJ = "y"  # never "e": the next word is an article or numeral, never an i-/hi- word
    CELLS = ("arriba a la izquierda", "arriba", "arriba a la derecha", "a la izquierda", "en el centro",
             "a la derecha", "abajo a la izquierda", "abajo", "abajo a la derecha")
    REL = {"left_of": "a la izquierda de {}", "right_of": "a la derecha de {}", "above": "encima de {}",
           "below": "debajo de {}"}

    @property
    def templates(self):
        return (
            lambda d: _capitalise(f"{self._phrases(d)}, sobre fondo {self.bg(d)}."),
            lambda d: f"Un fondo {self.bg(d)} con {self._phrases(d)}.",
            lambda d: f"Hay {self._phrases(d)}; el fondo es {self.bg(d)}.",
        )


class Italian(Romance):
    code = "it"
    SHAPE = {"circle": ("cerchio", "cerchi", "m"), "square": ("quadrato", "quadrati", "m"),
             "triangle": ("triangolo", "triangoli", "m"), "star": ("stella", "stelle", "f"),
             "heart": ("cuore", "cuori", "m"), "ellipse": ("ellisse", "ellissi", "f"), "cross": ("croce", "croci", "f")}
    COLOUR = {"red": ("rosso", "rossa", "rossi", "rosse"), "blue": ("blu",) * 4,
              "green": ("verde", "verde", "verdi", "verdi"), "yellow": ("giallo", "gialla", "gialli", "gialle"),
              "black": ("nero", "nera", "neri", "nere"), "white": ("bianco", "bianca", "bianchi", "bianche"),
              "purple": ("viola",) * 4, "orange": ("arancione", "arancione", "arancioni", "arancioni")}
    SIZE = {"small": ("piccolo", "piccola", "piccoli", "piccole"), "large": ("grande", "grande", "grandi", "grandi")}
    ARTICLE = {"m": "un", "f": "una"}  # the word after it is piccolo/grande, so never "uno"/"un'"
    NUM = {2: "due", 3: "tre", 4: "quattro", 5: "cinque"}
    CONJ = "e"
    CELLS = ("in alto a sinistra", "in alto", "in alto a destra", "a sinistra", "al centro", "a destra",
             "in basso a sinistra", "in basso", "in basso a destra")
    REL = {"left_of": "a sinistra di {}", "right_of": "a destra di {}", "above": "sopra {}", "below": "sotto {}"}

    def _clause(self, i: Placed) -> str:
        verb = "c'è" if i.group.count == 1 else "ci sono"
        return f"{self.location(i)} {verb} {self.np(i.group)}"

    @property
    def templates(self):
        return (
            lambda d: _capitalise(f"{self._phrases(d)}, su sfondo {self.bg(d)}."),
            lambda d: f"Uno sfondo {self.bg(d)} con {self._phrases(d)}.",  # "uno" before s + consonant
            lambda d: _capitalise(_join([self._clause(i) for i in d.items], "e") + f"; lo sfondo è {self.bg(d)}."),
        )


# ------------------------------------------------------------------------------ Slavic languages
class Russian(Language):
    code = "ru"
    # gender, nom sg, gen sg, instr sg, gen pl, instr pl
    SHAPE = {"circle": ("m", "круг", "круга", "кругом", "кругов", "кругами"),
             "square": ("m", "квадрат", "квадрата", "квадратом", "квадратов", "квадратами"),
             "triangle": ("m", "треугольник", "треугольника", "треугольником", "треугольников", "треугольниками"),
             "star": ("f", "звезда", "звезды", "звездой", "звёзд", "звёздами"),
             "heart": ("n", "сердце", "сердца", "сердцем", "сердец", "сердцами"),
             "ellipse": ("m", "эллипс", "эллипса", "эллипсом", "эллипсов", "эллипсами"),
             "cross": ("m", "крест", "креста", "крестом", "крестов", "крестами")}
    # adjective endings by stem type: nom m/f/n/pl, gen m+n/f/pl, instr m+n/f/pl, prepositional m+n
    ENDINGS = {"hard": ("ый", "ая", "ое", "ые", "ого", "ой", "ых", "ым", "ой", "ыми", "ом"),
               "soft": ("ий", "яя", "ее", "ие", "его", "ей", "их", "им", "ей", "ими", "ем"),
               "velar": ("ий", "ая", "ое", "ие", "ого", "ой", "их", "им", "ой", "ими", "ом"),
               "stressed": ("ой", "ая", "ое", "ие", "ого", "ой", "их", "им", "ой", "ими", "ом")}
    SLOT = {"nom_m": 0, "nom_f": 1, "nom_n": 2, "nom_pl": 3, "gen_m": 4, "gen_n": 4, "gen_f": 5, "gen_pl": 6,
            "ins_m": 7, "ins_n": 7, "ins_f": 8, "ins_pl": 9, "prep_m": 10}
    ADJ = {"red": ("красн", "hard"), "blue": ("син", "soft"), "green": ("зелён", "hard"), "yellow": ("жёлт", "hard"),
           "black": ("чёрн", "hard"), "white": ("бел", "hard"), "purple": ("фиолетов", "hard"),
           "orange": ("оранжев", "hard"), "small": ("маленьк", "velar"), "large": ("больш", "stressed")}
    NUM = {"nom": {2: "два", 3: "три", 4: "четыре", 5: "пять"}, "gen": {2: "двух", 3: "трёх", 4: "четырёх", 5: "пяти"},
           "ins": {2: "двумя", 3: "тремя", 4: "четырьмя", 5: "пятью"}}
    CELLS = ("вверху слева", "вверху", "вверху справа", "слева", "в центре", "справа", "внизу слева", "внизу",
             "внизу справа")
    REL = {"left_of": "слева от {}", "right_of": "справа от {}", "above": "над {}", "below": "под {}"}

    def adj(self, word: str, slot: str) -> str:
        stem, kind = self.ADJ[word]
        return stem + self.ENDINGS[kind][self.SLOT[slot]]

    def np(self, g: Group, case: str = "nom") -> str:
        gender, nom_sg, gen_sg, ins_sg, gen_pl, ins_pl = self.SHAPE[g.shape]
        if g.count == 1:
            slot, noun = f"{case}_{gender}", {"nom": nom_sg, "gen": gen_sg, "ins": ins_sg}[case]
        elif case == "nom" and g.count <= 4:
            # 2-4 govern the genitive singular noun; the adjective is genitive plural, or nominative
            # plural with feminine nouns ("две красные звезды").
            slot, noun = ("nom_pl" if gender == "f" else "gen_pl"), gen_sg
        else:  # 5+ in the nominative, and every oblique case, take plural forms
            slot, noun = f"{'gen' if case == 'nom' else case}_pl", {"nom": gen_pl, "gen": gen_pl, "ins": ins_pl}[case]
        words = [self.adj(g.size, slot), self.adj(g.colour, slot), noun]
        if g.count > 1:
            numeral = "две" if (case == "nom" and g.count == 2 and gender == "f") else self.NUM[case][g.count]
            words.insert(0, numeral)
        return " ".join(words)

    def location(self, item: Placed) -> str:
        if item.relation is None:
            return self.CELLS[item.cell]
        case = "gen" if item.relation in ("left_of", "right_of") else "ins"  # слева от + gen, над/под + instr
        return self.REL[item.relation].format(self.np(item.anchor, case))

    def _phrases(self, d: Description, case: str) -> str:
        return _join([f"{self.np(i.group, case)} {self.location(i)}" for i in d.items], "и")

    @property
    def templates(self):
        bg = lambda d, slot: self.adj(d.background, slot)  # noqa: E731  (фон is masculine)
        return (
            lambda d: _capitalise(f"{self._phrases(d, 'nom')} на {bg(d, 'prep_m')} фоне."),
            lambda d: _capitalise(f"{bg(d, 'nom_m')} фон с {self._phrases(d, 'ins')}."),
            lambda d: _capitalise(", ".join(f"{self.location(i)} — {self.np(i.group)}" for i in d.items)
                                  + f"; фон {bg(d, 'nom_m')}."),
        )


class Polish(Language):
    code = "pl"
    # gender, nom sg, gen sg, instr sg, nom pl, gen pl, instr pl
    SHAPE = {"circle": ("n", "koło", "koła", "kołem", "koła", "kół", "kołami"),
             "square": ("m", "kwadrat", "kwadratu", "kwadratem", "kwadraty", "kwadratów", "kwadratami"),
             "triangle": ("m", "trójkąt", "trójkąta", "trójkątem", "trójkąty", "trójkątów", "trójkątami"),
             "star": ("f", "gwiazda", "gwiazdy", "gwiazdą", "gwiazdy", "gwiazd", "gwiazdami"),
             "heart": ("n", "serce", "serca", "sercem", "serca", "serc", "sercami"),
             "ellipse": ("f", "elipsa", "elipsy", "elipsą", "elipsy", "elips", "elipsami"),
             "cross": ("m", "krzyż", "krzyża", "krzyżem", "krzyże", "krzyży", "krzyżami")}
    ENDINGS = {"nom_m": "y", "nom_f": "a", "nom_n": "e", "nom_pl": "e", "gen_m": "ego", "gen_n": "ego", "gen_f": "ej",
               "gen_pl": "ych", "ins_m": "ym", "ins_n": "ym", "ins_f": "ą", "ins_pl": "ymi", "loc_n": "ym"}
    ADJ = {"red": "czerwon", "blue": "niebiesk", "green": "zielon", "yellow": "żółt", "black": "czarn",
           "white": "biał", "purple": "fioletow", "orange": "pomarańczow", "small": "mał", "large": "duż"}
    # non-masculine-personal numerals: nom (m+n, f), gen, instr (m+n, f)
    NUM = {"nom": {2: ("dwa", "dwie"), 3: ("trzy",) * 2, 4: ("cztery",) * 2, 5: ("pięć",) * 2},
           "gen": {2: ("dwóch",) * 2, 3: ("trzech",) * 2, 4: ("czterech",) * 2, 5: ("pięciu",) * 2},
           "ins": {2: ("dwoma", "dwiema"), 3: ("trzema",) * 2, 4: ("czterema",) * 2, 5: ("pięcioma",) * 2}}
    CELLS = ("u góry po lewej", "u góry", "u góry po prawej", "po lewej", "pośrodku", "po prawej",
             "na dole po lewej", "na dole", "na dole po prawej")
    REL = {"left_of": "na lewo od {}", "right_of": "na prawo od {}", "above": "nad {}", "below": "pod {}"}

    def adj(self, word: str, slot: str) -> str:
        stem, ending = self.ADJ[word], self.ENDINGS[slot]
        if stem[-1] in "kg":  # niebieski, niebieskie, niebieskiego: y → i, and i before e
            ending = ending.replace("y", "i") if ending[0] == "y" else ("i" + ending if ending[0] == "e" else ending)
        return stem + ending

    def np(self, g: Group, case: str = "nom") -> str:
        gender, nom_sg, gen_sg, ins_sg, nom_pl, gen_pl, ins_pl = self.SHAPE[g.shape]
        if g.count == 1:
            slot, noun = f"{case}_{gender}", {"nom": nom_sg, "gen": gen_sg, "ins": ins_sg}[case]
        elif case == "nom" and g.count <= 4:
            slot, noun = "nom_pl", nom_pl  # dwa czerwone koła
        else:  # pięć czerwonych kół; oblique cases agree in the plural
            slot, noun = f"{'gen' if case == 'nom' else case}_pl", {"nom": gen_pl, "gen": gen_pl, "ins": ins_pl}[case]
        words = [self.adj(g.size, slot), self.adj(g.colour, slot), noun]
        if g.count > 1:
            words.insert(0, self.NUM[case][g.count][gender == "f"])
        return " ".join(words)

    def location(self, item: Placed) -> str:
        if item.relation is None:
            return self.CELLS[item.cell]
        case = "gen" if item.relation in ("left_of", "right_of") else "ins"  # na lewo od + gen, nad/pod + instr
        return self.REL[item.relation].format(self.np(item.anchor, case))

    @staticmethod
    def verb(count: int) -> str:
        return "jest" if count == 1 or count >= 5 else "są"  # "pięć kół jest": 5+ takes the singular

    def _phrases(self, d: Description, case: str) -> str:
        return _join([f"{self.np(i.group, case)} {self.location(i)}" for i in d.items], "i")

    @property
    def templates(self):
        return (
            lambda d: _capitalise(f"{self._phrases(d, 'nom')}, na {self.adj(d.background, 'loc_n')} tle."),
            # "z", not "ze": the next word is mały/duży or a numeral
            lambda d: _capitalise(f"{self.adj(d.background, 'nom_n')} tło z {self._phrases(d, 'ins')}."),
            lambda d: _capitalise(_join([f"{self.location(i)} {self.verb(i.group.count)} {self.np(i.group)}"
                                         for i in d.items], "i") + f"; tło jest {self.adj(d.background, 'nom_n')}."),
        )


# --------------------------------------------------------------------------------------- Turkish
_TR_VOWELS = "aıoueiöü"
_TR_VOICELESS = "çfhkpsşt"


def _tr_last_vowel(word: str) -> str:
    return next(ch for ch in reversed(word) if ch in _TR_VOWELS)


def tr_locative(word: str) -> str:
    """-da/-de/-ta/-te: two-way vowel harmony, t after a voiceless consonant."""
    vowel = "a" if _tr_last_vowel(word) in "aıou" else "e"
    return word + ("t" if word[-1] in _TR_VOICELESS else "d") + vowel


def _tr_high_vowel(word: str, harmony: str | None = None) -> str:
    """The four-way harmony vowel (ı i u ü) that follows ``word`` (or follows the vowel ``harmony``)."""
    return {"a": "ı", "ı": "ı", "o": "u", "u": "u", "e": "i", "i": "i", "ö": "ü", "ü": "ü"}[
        harmony or _tr_last_vowel(word)]


def tr_genitive(stem: str, harmony: str | None = None) -> str:
    """-ın/-in/-un/-ün, with buffer n after a vowel (dairenin)."""
    return stem + ("n" if stem[-1] in _TR_VOWELS else "") + _tr_high_vowel(stem, harmony) + "n"


def tr_with(word: str) -> str:
    """-lı/-li/-lu/-lü ("having")."""
    return word + "l" + _tr_high_vowel(word)


class Turkish(Language):
    code = "tr"
    # word, stem before a vowel-initial suffix, harmony vowel where the word breaks the rule
    # (kalp is an Arabic loan with front suffixes: kalbin, kalpte)
    SHAPE = {"circle": ("daire", "daire", None), "square": ("kare", "kare", None),
             "triangle": ("üçgen", "üçgen", None), "star": ("yıldız", "yıldız", None), "heart": ("kalp", "kalb", "e"),
             "ellipse": ("elips", "elips", None), "cross": ("haç", "haç", None)}
    COLOUR = {"red": "kırmızı", "blue": "mavi", "green": "yeşil", "yellow": "sarı", "black": "siyah", "white": "beyaz",
              "purple": "mor", "orange": "turuncu"}
    SIZE = {"small": "küçük", "large": "büyük"}
    NUM = {2: "iki", 3: "üç", 4: "dört", 5: "beş"}
    CELLS = tuple(tr_locative(w)
                  for w in ("sol üst", "üst", "sağ üst", "sol", "orta", "sağ", "sol alt", "alt", "sağ alt"))
    REL = {"left_of": "{} solunda", "right_of": "{} sağında", "above": "{} üstünde", "below": "{} altında"}

    def np(self, g: Group) -> str:
        word = self.SHAPE[g.shape][0]
        size, colour = self.SIZE[g.size], self.COLOUR[g.colour]
        if g.count == 1:
            return f"{size} {colour} bir {word}"
        return f"{self.NUM[g.count]} {size} {colour} {word}"  # no plural suffix after a numeral

    def anchor_np(self, group: Group) -> str:
        words = self.np(group).split(" ")
        _, stem, harmony = self.SHAPE[group.shape]
        return " ".join(words[:-1] + [tr_genitive(stem, harmony)])

    def _phrases(self, d: Description) -> str:
        return _join([f"{self.location(i)} {self.np(i.group)}" for i in d.items], "ve")

    @staticmethod
    def _capitalise(text: str) -> str:
        first = {"i": "İ", "ı": "I"}.get(text[0], text[0].upper())  # Turkish dotted/dotless i
        return first + text[1:]

    @property
    def templates(self):
        return (
            lambda d: self._capitalise(f"{self.COLOUR[d.background]} {tr_locative('arka plan')} {self._phrases(d)}."),
            lambda d: self._capitalise(f"{self._phrases(d)} var; arka plan {self.COLOUR[d.background]}."),
            lambda d: self._capitalise(f"{self.COLOUR[d.background]} {tr_with('zemin')} bir resimde "
                                       f"{self._phrases(d)} bulunuyor."),
        )


# --------------------------------------------------------------------------------------- Chinese
class Chinese(Language):
    code = "zh"
    SHAPE = {"circle": ("圆", "个"), "square": ("正方形", "个"), "triangle": ("三角形", "个"), "star": ("星星", "颗"),
             "heart": ("爱心", "个"), "ellipse": ("椭圆", "个"), "cross": ("十字", "个")}
    COLOUR = {"red": "红色", "blue": "蓝色", "green": "绿色", "yellow": "黄色", "black": "黑色", "white": "白色",
              "purple": "紫色", "orange": "橙色"}
    SIZE = {"small": "小", "large": "大"}
    NUM = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五"}  # 两, not 二, before a classifier
    CELLS = ("左上方", "上方", "右上方", "左边", "中间", "右边", "左下方", "下方", "右下方")
    REL = {"left_of": "{}的左边", "right_of": "{}的右边", "above": "{}的上方", "below": "{}的下方"}

    def np(self, g: Group) -> str:
        noun, classifier = self.SHAPE[g.shape]
        return f"{self.NUM[g.count]}{classifier}{self.COLOUR[g.colour]}的{self.SIZE[g.size]}{noun}"

    def _clauses(self, d: Description) -> str:
        return "，".join(f"{self.location(i)}有{self.np(i.group)}" for i in d.items)

    @property
    def templates(self):
        return (
            lambda d: f"{self.COLOUR[d.background]}背景上，{self._clauses(d)}。",
            lambda d: f"{self._clauses(d)}，背景是{self.COLOUR[d.background]}的。",
        )


# -------------------------------------------------------------------------------------- Japanese
class Japanese(Language):
    code = "ja"
    SHAPE = {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星", "heart": "ハート", "ellipse": "楕円",
             "cross": "十字"}
    COLOUR_ATTR = {"red": "赤い", "blue": "青い", "green": "緑の", "yellow": "黄色い", "black": "黒い", "white": "白い",
                   "purple": "紫の", "orange": "オレンジ色の"}
    COLOUR_NOUN = {"red": "赤", "blue": "青", "green": "緑", "yellow": "黄色", "black": "黒", "white": "白",
                   "purple": "紫", "orange": "オレンジ色"}
    SIZE = {"small": "小さな", "large": "大きな"}
    TSU = {1: "一つ", 2: "二つ", 3: "三つ", 4: "四つ", 5: "五つ"}
    CELLS = ("左上", "上", "右上", "左", "中央", "右", "左下", "下", "右下")
    REL = {"left_of": "{}の左", "right_of": "{}の右", "above": "{}の上", "below": "{}の下"}

    def np(self, g: Group) -> str:
        return f"{self.SIZE[g.size]}{self.COLOUR_ATTR[g.colour]}{self.SHAPE[g.shape]}"

    def anchor_np(self, g: Group) -> str:
        return self.np(g) if g.count == 1 else f"{self.TSU[g.count]}の{self.np(g)}"  # 二つの青い四角

    def _clauses(self, d: Description, counter) -> str:
        return "、".join(f"{self.location(i)}に{self.np(i.group)}が{counter(i.group.count)}" for i in d.items)

    @property
    def templates(self):
        return (
            lambda d: f"{self._clauses(d, self.TSU.get)}あります。背景は{self.COLOUR_NOUN[d.background]}です。",
            lambda d: f"背景は{self.COLOUR_NOUN[d.background]}で、{self._clauses(d, lambda n: f'{n}個')}ある。",
        )


# ---------------------------------------------------------------------------------------- Korean
def ko_has_batchim(word: str) -> bool:
    """Whether the last Hangul syllable ends in a final consonant."""
    code = ord(word[-1]) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0


def ko_particle(word: str, after_consonant: str, after_vowel: str) -> str:
    return word + (after_consonant if ko_has_batchim(word) else after_vowel)


class Korean(Language):
    code = "ko"
    SHAPE = {"circle": "원", "square": "사각형", "triangle": "삼각형", "star": "별", "heart": "하트", "ellipse": "타원",
             "cross": "십자가"}
    COLOUR_ATTR = {"red": "빨간", "blue": "파란", "green": "초록색", "yellow": "노란", "black": "검은", "white": "흰",
                   "purple": "보라색", "orange": "주황색"}
    COLOUR_NOUN = {"red": "빨간색", "blue": "파란색", "green": "초록색", "yellow": "노란색", "black": "검은색",
                   "white": "흰색", "purple": "보라색", "orange": "주황색"}
    SIZE = {"small": "작은", "large": "큰"}
    NUM = {2: "두", 3: "세", 4: "네", 5: "다섯"}  # native numerals in their counter forms
    CELLS = ("왼쪽 위", "위쪽", "오른쪽 위", "왼쪽", "가운데", "오른쪽", "왼쪽 아래", "아래쪽", "오른쪽 아래")
    REL = {"left_of": "{}의 왼쪽", "right_of": "{}의 오른쪽", "above": "{} 위", "below": "{} 아래"}

    def np(self, g: Group) -> str:
        base = f"{self.SIZE[g.size]} {self.COLOUR_ATTR[g.colour]} {self.SHAPE[g.shape]}"
        return base if g.count == 1 else f"{base} {self.NUM[g.count]} 개"

    def _subject_clauses(self, d: Description) -> str:
        clauses = [f"{self.location(i)}에 {ko_particle(self.np(i.group), '이', '가')}" for i in d.items]
        return " 있고, ".join(clauses) + " 있습니다."

    @property
    def templates(self):
        bg = self.COLOUR_NOUN
        return (
            lambda d: f"{self._subject_clauses(d)} {ko_particle('배경', '은', '는')} {bg[d.background]}입니다.",
            lambda d: f"{ko_particle('배경', '은', '는')} {bg[d.background]}이고, {self._subject_clauses(d)}",
            lambda d: f"{bg[d.background]} 배경에 "
                      + ", ".join(f"{self.location(i)}에는 {ko_particle(self.np(i.group), '을', '를')}"
                                  for i in d.items)
                      + " 그린 그림입니다.",
        )


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (
    English(), German(), French(), Spanish(), Italian(), Russian(), Polish(), Turkish(), Chinese(), Japanese(),
    Korean())}


def num_templates(lang: str) -> int:
    return len(LANGUAGES[lang].templates)


def render_caption(lang: str, desc: Description, template: int) -> str:
    """The caption of ``desc`` in ``lang`` with template number ``template``."""
    return LANGUAGES[lang].render(desc, template)
