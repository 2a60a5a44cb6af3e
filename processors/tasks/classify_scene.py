"""``classify-scene``: coarse scene categories and indoor/outdoor, from ImageNet class scores.

**What this is.** No scene classifier (Places365 or similar) ships in any installable package
here (see shared/reference/models.md), so this task reuses torchvision's ImageNet MobileNetV2
(:mod:`processors.models.mobilenet`, the same network as ``tag``) and maps its 1000 object classes
to a
handful of scene categories with the explicit table :data:`SCENE_TABLE`. A category's score is
the summed probability of its classes. ImageNet does contain some scene classes (alp, cliff,
lakeside, seashore, valley, volcano, ...) and many place-typical objects (street sign, studio
couch, dining table ...), which is what the mapping relies on.

**Categories** (each with the indoor/outdoor evidence weight its classes carry):

============== ========== ===========================================================
category       evidence   what maps there (ImageNet classes, see SCENE_TABLE)
============== ========== ===========================================================
outdoor/nature outdoor 1  landscapes (alp, cliff, valley, lakeside, seashore, sandbar,
                          volcano, geyser, coral reef, promontory), flowers and wild
                          fungi (daisy, rapeseed, agaric, ...), hay, tents
outdoor/urban  outdoor 1  streets and infrastructure (street sign, traffic light,
                          parking meter, bridges, pier, dam, water tower, fences,
                          gas pump), buildings seen from outside (church, mosque,
                          palace, castle, barn, greenhouse, tile roof, ...)
indoor/home    indoor 1   furniture, appliances, home electronics, bathroom and
                          kitchen fittings (studio couch, dining table, desk,
                          bookcase, refrigerator, stove, bathtub, television, ...)
indoor/public  indoor 0.7 shops, restaurant, library, stage, gym apparatus, pool table
                          (0.7: ImageNet's shop classes include storefront photos)
vehicles       outdoor 0.8 cars, trucks, buses, trains, boats, aircraft, bicycles
food/drink     indoor 0.5 dishes, fruit and vegetables, drinks and their vessels
                          (0.5: food is usually photographed indoors, not always)
animals/pets   none       dog breeds, domestic cats, hamster, guinea pig, goldfish
animals/wild   none       every other animal class (0-397)
people         none       see below
text/graphics  none       web site, comic book, crossword, book jacket, envelope, menu
============== ========== ===========================================================

Classes not in the table (tools, instruments, small objects, textures...) count towards no
category; ``unmapped`` in the result is their summed probability.

**People.** ImageNet-1k has NO person class. ``people`` sums the three person-role classes
(ballplayer, groom, scuba diver) and worn clothing/accessories (jersey, suit, gown, military
uniform, sunglasses, ...), i.e. indirect evidence that is often absent from a photo of a person
(the astronaut portrait scores "bobsled" and "stethoscope"). Use ``count-faces`` to know whether
people are in a picture.

**indoor_outdoor.** indoor evidence = sum over classes of probability x the category's indoor
weight (likewise outdoor). The answer is the larger side when it reaches 0.3 and is at least
twice the other, else "unknown" (``indoor_outdoor_score`` is the larger evidence either way).

**Measured here** (tests/unit/processors/models/test_mobilenet.py): a rendered mountain-lake
landscape (synthetic: no
real landscape photo is available offline) -> outdoor/nature (alp, cliff, lakeside, valley),
outdoor; skimage's rocket (a launch pad photo) -> outdoor (drilling platform, space shuttle,
obelisk, missile); coffee -> food/drink ("espresso" 0.99) -> indoor at 0.5; the astronaut
portrait (studio) -> unknown. Not measured on a labelled scene data set: treat the categories
as hints.

Input size: ``max_side=512``, as ``tag`` (same network, same reasoning; the agent's decode is
shared).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.models.mobilenet import MAX_SIDE as MOBILENET_MAX_SIDE
from processors.models.mobilenet import NUM_CLASSES, class_names, get_mobilenet
from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register
from processors.tasks.tag import tag_labels

VERSION: Final = "1.0"
MAX_SIDE: Final = MOBILENET_MAX_SIDE
#: Evidence an indoor/outdoor answer needs (and it must be twice the other side's).
IO_MIN_EVIDENCE: Final = 0.3
IO_RATIO: Final = 2.0

Side = Literal["indoor", "outdoor"]


@dataclass(frozen=True)
class SceneCategory:
    name: str
    side: Side | None
    weight: float
    #: ImageNet class names (first synonym of the WordNet label, as in imagenet1k_label_to_names)
    names: tuple[str, ...] = ()
    #: class-index ranges, inclusive (for the animal blocks; ImageNet orders classes by synset)
    ranges: tuple[tuple[int, int], ...] = ()
    #: single class indices (for the two names ImageNet uses twice: crane, maillot)
    indices: tuple[int, ...] = ()


_PETS: Final = (
    "goldfish", "hamster", "guinea pig", "Angora",
)

SCENE_TABLE: Final[tuple[SceneCategory, ...]] = (
    SceneCategory("outdoor/nature", "outdoor", 1.0, names=(
        "alp", "cliff", "coral reef", "geyser", "lakeside", "promontory", "sandbar", "seashore",
        "valley", "volcano", "rapeseed", "daisy", "yellow lady's slipper", "hay", "coral fungus",
        "agaric", "gyromitra", "stinkhorn", "earthstar", "hen-of-the-woods", "bolete", "hip",
        "buckeye", "acorn", "ear", "mountain tent",
    )),
    SceneCategory("outdoor/urban", "outdoor", 1.0, names=(
        "street sign", "traffic light", "parking meter", "mailbox", "manhole cover", "fountain",
        "triumphal arch", "obelisk", "palace", "church", "mosque", "monastery", "stupa", "castle",
        "bell cote", "dome", "planetarium", "prison", "suspension bridge", "steel arch bridge",
        "viaduct", "pier", "dock", "breakwater", "dam", "water tower", "beacon", "tile roof",
        "thatch", "picket fence", "chainlink fence", "worm fence", "stone wall", "gas pump",
        "barn", "boathouse", "greenhouse", "apiary", "birdhouse", "park bench", "patio",
        "totem pole", "flagpole", "maypole", "megalith", "cliff dwelling", "yurt",
        "mobile home", "drilling platform", "radio telescope", "solar dish", "lumbermill",
        "sundial", "swing", "carousel",
    ), indices=(517,)),  # 517: crane (the construction machine)
    SceneCategory("indoor/home", "indoor", 1.0, names=(
        "studio couch", "dining table", "desk", "bookcase", "refrigerator", "four-poster",
        "home theater", "wardrobe", "washbasin", "bathtub", "shower curtain", "toilet seat",
        "microwave", "dishwasher", "stove", "window shade", "window screen", "quilt", "pillow",
        "china cabinet", "chiffonier", "medicine chest", "entertainment center", "rocking chair",
        "folding chair", "crib", "cradle", "bassinet", "table lamp", "lampshade",
        "desktop computer", "monitor", "screen", "television", "file", "printer", "photocopier",
        "wall clock", "radiator", "space heater", "fire screen", "vacuum", "espresso maker",
        "Dutch oven", "frying pan", "wok", "toaster", "waffle iron", "Crock Pot", "plate rack",
        "sliding door", "prayer rug", "doormat", "shoji", "grand piano", "upright", "washer",
        "iron", "sewing machine", "laptop", "computer keyboard", "mouse", "bannister", "vault",
        "soap dispenser", "toilet tissue",
    )),
    SceneCategory("indoor/public", "indoor", 0.7, names=(
        "library", "restaurant", "barbershop", "bakery", "butcher shop", "confectionery",
        "grocery store", "shoe shop", "tobacco shop", "toyshop", "bookshop", "stage",
        "theater curtain", "organ", "altar", "barber chair", "pool table", "slot",
        "shopping basket", "turnstile", "balance beam", "parallel bars", "horizontal bar",
    )),
    SceneCategory("vehicles", "outdoor", 0.8, names=(
        "aircraft carrier", "airliner", "airship", "ambulance", "amphibian", "beach wagon",
        "bicycle-built-for-two", "bobsled", "bullet train", "cab", "canoe", "catamaran",
        "container ship", "convertible", "dogsled", "electric locomotive", "fireboat",
        "fire engine", "forklift", "freight car", "garbage truck", "go-kart", "golfcart",
        "gondola", "half track", "harvester", "horse cart", "jeep", "jinrikisha", "lifeboat",
        "limousine", "liner", "minibus", "minivan", "Model T", "moped", "motor scooter",
        "mountain bike", "moving van", "oxcart", "paddlewheel", "passenger car", "pickup",
        "pirate", "police van", "racer", "recreational vehicle", "school bus", "schooner",
        "snowmobile", "snowplow", "space shuttle", "speedboat", "sports car", "steam locomotive",
        "streetcar", "submarine", "tank", "thresher", "tow truck", "tractor", "trailer truck",
        "tricycle", "trimaran", "trolleybus", "unicycle", "warplane", "wreck", "yawl",
        "missile", "projectile", "car wheel", "grille",
    )),
    SceneCategory("food/drink", "indoor", 0.5, names=(
        "plate", "guacamole", "consomme", "hot pot", "trifle", "ice cream", "ice lolly",
        "French loaf", "bagel", "pretzel", "cheeseburger", "hotdog", "mashed potato",
        "head cabbage", "broccoli", "cauliflower", "zucchini", "spaghetti squash",
        "acorn squash", "butternut squash", "cucumber", "artichoke", "bell pepper", "cardoon",
        "mushroom", "Granny Smith", "strawberry", "orange", "lemon", "fig", "pineapple",
        "banana", "jackfruit", "custard apple", "pomegranate", "carbonara", "chocolate sauce",
        "dough", "meat loaf", "pizza", "potpie", "burrito", "red wine", "espresso", "cup",
        "eggnog", "corn", "coffee mug", "coffeepot", "beer bottle", "beer glass", "wine bottle",
        "water bottle", "pop bottle", "teapot", "soup bowl", "mixing bowl", "goblet",
        "cocktail shaker", "water jug", "whiskey jug", "pitcher", "menu",
    )),
    SceneCategory("animals/pets", None, 0.0, names=_PETS, ranges=((151, 268), (281, 285))),
    # every other animal class: 0-397 minus the pets (resolved in _resolve)
    SceneCategory("animals/wild", None, 0.0, ranges=((0, 397),)),
    SceneCategory("people", None, 0.0, names=(
        "ballplayer", "groom", "scuba diver", "academic gown", "abaya", "cardigan", "jersey",
        "suit", "sweatshirt", "military uniform", "lab coat", "kimono", "gown", "miniskirt",
        "bikini", "swimming trunks", "fur coat", "trench coat", "cloak", "pajama", "vestment",
        "sarong", "stole", "overskirt", "hoopskirt", "apron", "bow tie", "Windsor tie",
        "bolo tie", "wig", "sunglasses", "sunglass", "mortarboard", "cowboy hat", "sombrero",
        "bathing cap", "ski mask", "neck brace", "bulletproof vest", "jean",
    ), indices=(638, 639)),  # maillot (leotard), maillot (swimsuit)
    SceneCategory("text/graphics", None, 0.0, names=(
        "web site", "comic book", "crossword puzzle", "book jacket", "envelope",
    )),
)

NOTE: Final = (
    "Scene categories are derived from ImageNet object classes (no scene model ships offline); "
    "ImageNet has no person class, so 'people' is indirect evidence (clothing, 3 person roles) "
    "and says nothing when absent. indoor_outdoor is 'unknown' unless place evidence is clear."
)


@cache
def category_of_class() -> tuple[int, ...]:
    """For each ImageNet class, the index of its category in :data:`SCENE_TABLE` (-1: none)."""
    names = class_names("imagenet")
    by_name: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_name.setdefault(n, []).append(i)
    out = [-1] * NUM_CLASSES
    for ci, cat in enumerate(SCENE_TABLE):
        idx: list[int] = list(cat.indices)
        for n in cat.names:
            found = by_name.get(n)
            if found is None:
                raise ValueError(f"scene table: no ImageNet class {n!r}")
            if len(found) != 1:
                raise ValueError(f"scene table: ImageNet name {n!r} is ambiguous: use indices")
            idx.extend(found)
        for a, b in cat.ranges:
            idx.extend(range(a, b + 1))
        for i in idx:
            if out[i] == -1:  # first category wins (pets before the animal block)
                out[i] = ci
            elif out[i] != ci and cat.ranges == ():
                raise ValueError(f"scene table: class {i} ({names[i]}) mapped twice")
    return tuple(out)


def classify_probs(probs: npt.NDArray[Any], min_score: float = 0.05, basis_k: int = 5,
                   ) -> dict[str, Any]:
    """The ``classify-scene`` result (without the model identity) of one probability row."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (NUM_CLASSES,):
        raise ValueError(f"expected {NUM_CLASSES} probabilities")
    cats = np.asarray(category_of_class())
    scores = np.zeros(len(SCENE_TABLE))
    np.add.at(scores, cats[cats >= 0], p[cats >= 0])
    unmapped = float(p[cats < 0].sum())
    evidence = {"indoor": 0.0, "outdoor": 0.0}
    for ci, cat in enumerate(SCENE_TABLE):
        if cat.side is not None:
            evidence[cat.side] += float(scores[ci]) * cat.weight
    best: Side = "indoor" if evidence["indoor"] >= evidence["outdoor"] else "outdoor"
    other = evidence["outdoor" if best == "indoor" else "indoor"]
    io: str = best
    if evidence[best] < IO_MIN_EVIDENCE or evidence[best] < IO_RATIO * other:
        io = "unknown"
    labels = tag_labels()
    basis = []
    for i in np.argsort(-p)[:basis_k]:
        ci = int(cats[int(i)])
        basis.append({"label": labels[int(i)], "score": round(float(p[int(i)]), 4),
                      "category": SCENE_TABLE[ci].name if ci >= 0 else None})
    scenes = [{"category": SCENE_TABLE[ci].name, "score": round(float(scores[ci]), 4)}
              for ci in np.argsort(-scores) if float(scores[ci]) >= min_score]
    return {
        "scenes": scenes,
        "scene": scenes[0]["category"] if scenes else None,
        "indoor_outdoor": io,
        "indoor_outdoor_score": round(evidence[best], 4),
        "evidence": {k: round(v, 4) for k, v in evidence.items()},
        "unmapped": round(unmapped, 4),
        "basis": basis,
    }


class SceneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(default=0.05, ge=0.0, le=1.0,
                             description="smallest category score listed under scenes")


def _scenes_of(result: Mapping[str, Any]) -> Any:
    return [s["category"] for s in result.get("scenes") or []]


def _io_of(result: Mapping[str, Any]) -> Any:
    return result.get("indoor_outdoor")


#: "scene" is list-valued (every listed category): "scene starts with outdoor" holds when any
#: listed category does.
RULE_PROPERTIES: Final[dict[str, RuleProperty]] = {
    "scene": RuleProperty("string", _scenes_of, aliases=("scene category", "scenes")),
    "indoor_outdoor": RuleProperty("string", _io_of,
                                   aliases=("indoor or outdoor", "indoor/outdoor")),
}


@register(
    "classify-scene",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=SceneParams,
    rule_properties=RULE_PROPERTIES,
)
def classify_scene(inp: TaskInput, params: SceneParams) -> dict[str, Any]:
    """Coarse scene categories and indoor/outdoor (ImageNet classes mapped to scenes)."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("classify-scene needs a decoded image input", permanent=True)
    model = get_mobilenet(inp.settings.model_threads, inp.settings.data_dir)
    probs, _ = model.predict([img])
    return {**classify_probs(probs[0], params.min_score), **model.identity, "note": NOTE}
