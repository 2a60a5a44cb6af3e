"""Pure task code: bytes/frames in, JSON-able result out. No Kafka, no storage.

Every module listed in ``BUILTIN_MODULES`` registers one task with
:func:`processors.registry.register`. Adding a task = one module + one line here.
"""

BUILTIN_MODULES: list[str] = [
    "processors.tasks.validate_image",
    "processors.tasks.blurhash",
    "processors.tasks.dominant_colors",
    "processors.tasks.count_faces",
    "processors.tasks.index_faces",
    "processors.tasks.nsfw",
    "processors.tasks.ocr",
    "processors.tasks.remove_background",
    "processors.tasks.tag",
    "processors.tasks.classify_scene",
    "processors.tasks.index_similarity",
    "processors.tasks.recognize_plate",
    "processors.tasks.blur_plates",
    "processors.tasks.extract_logo",
    "processors.tasks.remove_artifacts",
    "processors.tasks.extract_metadata",
    "processors.tasks.analyze_quality",
    "processors.tasks.analyze_accessibility",
    "processors.tasks.eager",
    "processors.tasks.video_validate",
    "processors.tasks.video_compress",
    "processors.tasks.video_convert",
    "processors.tasks.video_trim",
    "processors.tasks.video_transcode",
    "processors.tasks.video_sfw",
    "processors.tasks.thumbnail",
    "processors.tasks.quarantine",
    "processors.tasks.remove_original",
    "processors.tasks.add_tags",
    "processors.tasks.notify",
]
