"""``validate-image``: the probed image properties, offered to validation rules.

No pixel is decoded: the agent probes the header (:func:`processors.media.imaging.probe_header`) and
puts width/height/format, plus file size, folder and content type from the upload, into
``TaskInput.properties``. This task turns them into a result whose fields the validation rules
("image width is smaller than 500 => Notice", "file size is larger than 5000000 => Refuse")
compare against, so a sync upload can be refused before any expensive task runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.registry import (
    InputSpec,
    NoParams,
    ProcessorError,
    RuleProperty,
    TaskInput,
    register,
    result_field,
)

VERSION = "1.0"

#: Result fields copied from the probed properties when present (absent = key left out, the same
#: convention as ``TaskInput.properties``).
OPTIONAL_FIELDS = ("file_size", "folder", "content_type")


RULE_PROPERTIES: dict[str, RuleProperty] = {
    "width": RuleProperty(
        "number",
        result_field("width"),
        aliases=(
            "width",
            "image width",
            "width (px)",
            "image width (px)",
            "image/video width (px)",
        ),
    ),
    "height": RuleProperty(
        "number",
        result_field("height"),
        aliases=(
            "height",
            "image height",
            "height (px)",
            "image height (px)",
            "image/video height (px)",
        ),
    ),
    "format": RuleProperty(
        "string", result_field("format"), aliases=("format", "image format", "file format")
    ),
    "file_size": RuleProperty(
        "number",
        result_field("file_size"),
        aliases=("file size", "file size (b)", "file size in bytes", "size", "filesize"),
    ),
    "folder": RuleProperty(
        "string",
        result_field("folder"),
        aliases=("folder", "folder path", "upload folder", "upload folder path"),
    ),
}


def _positive_int(props: Mapping[str, Any], name: str) -> int:
    value = props.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ProcessorError(f"not an image: no valid {name} was probed (got {value!r})")
    return int(value)


@register(
    "validate-image",
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="header"),
    params=NoParams,
    rule_properties=RULE_PROPERTIES,
    cheap=True,
)
def validate_image(inp: TaskInput, params: NoParams) -> dict[str, Any]:
    """Report the image's width, height, format, file size and folder for validation rules.

    Raises a permanent ``ProcessorError`` when width/height/format are missing: the probe could
    not read an image header, so the upload is not an image and no retry will change that.
    """
    props = inp.properties
    width = _positive_int(props, "width")
    height = _positive_int(props, "height")
    fmt = props.get("format")
    if not isinstance(fmt, str) or not fmt.strip():
        raise ProcessorError(f"not an image: no format was probed (got {fmt!r})")
    result: dict[str, Any] = {"width": width, "height": height, "format": fmt.strip().upper()}
    for name in OPTIONAL_FIELDS:
        if name in props and props[name] is not None:
            result[name] = props[name]
    return result
