"""Pure task code: bytes/frames in, JSON-able result out. No Kafka, no storage.

Every module listed in ``BUILTIN_MODULES`` registers one task with
:func:`processors.registry.register`. Adding a task = one module + one line here.
"""

BUILTIN_MODULES: list[str] = [
    "processors.validate_image",
    "processors.blurhash",
    "processors.dominant_colors",
    "processors.count_faces",
    "processors.index_faces",
    "processors.nsfw",
    "processors.ocr",
    "processors.remove_background",
    "processors.tag",
    "processors.classify_scene",
    "processors.index_similarity",
    "processors.recognize_plate",
    "processors.blur_plates",
    "processors.extract_logo",
    "processors.remove_artifacts",
    "processors.video_validate",
    "processors.video_compress",
    "processors.video_convert",
    "processors.video_trim",
    "processors.video_transcode",
    "processors.video_sfw",
]
