"""A client that knows Darkroom only by its .avsc files: fastavro + confluent-kafka, nothing else.

Run as a separate process by tests/integration/test_raw_client.py, which checks that no darkroom
package
was imported. It is also the example for users writing producers/consumers in other stacks.

    python raw_client.py produce BOOTSTRAP SCHEMA_DIR ASSET_ID FILE_URI FILENAME
    python raw_client.py consume BOOTSTRAP SCHEMA_DIR ASSET_ID TIMEOUT
"""

import io
import json
import sys
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form


def load(schema_dir: str, name: str) -> tuple[dict, bytes]:
    parsed = fastavro.parse_schema(json.loads((Path(schema_dir) / f"{name}.avsc").read_text()))
    # Avro single-object encoding: C3 01 + CRC-64-AVRO fingerprint (little-endian) + body.
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return parsed, b"\xc3\x01" + fp


def encode(schema_dir: str, name: str, record: dict) -> bytes:
    parsed, header = load(schema_dir, name)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return header + buf.getvalue()


def decode(schema_dir: str, name: str, value: bytes) -> dict:
    parsed, header = load(schema_dir, name)
    assert value[:10] == header, "not a single-object value of " + name
    return fastavro.schemaless_reader(io.BytesIO(value[10:]), parsed, None)


def produce(bootstrap: str, schema_dir: str, asset_id: str, uri: str, filename: str) -> None:
    value = encode(schema_dir, "UploadEvent", {
        "asset_id": asset_id, "uri": uri, "filename": filename, "folder": "/raw",
        "content_type": "image/png", "uploaded_at": int(time.time() * 1000),
    })
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce("darkroom.uploads", key=asset_id.encode(), value=value)
    assert p.flush(10) == 0


def consume(bootstrap: str, schema_dir: str, asset_id: str, timeout: float) -> None:
    """Print, as JSON, the first complete AssetUpdate and every TaskResult of the asset."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "raw-" + uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    topics = ["darkroom.assets", "darkroom.results.blurhash", "darkroom.results.dominant-colors",
              "darkroom.results.validate-image"]
    md = c.list_topics(timeout=10)
    c.assign([TopicPartition(t, p, 0) for t in topics for p in md.topics[t].partitions])
    results, final = {}, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (final is None or len(results) < 3):
        for m in c.consume(100, timeout=0.2):
            if m.error() or m.key() != asset_id.encode():
                continue
            if m.topic() == "darkroom.assets":
                upd = decode(schema_dir, "AssetUpdate", m.value())
                if upd["status"] != "pending":
                    final = upd
            else:
                res = decode(schema_dir, "TaskResult", m.value())
                results[res["task"]] = {"status": res["status"],
                                        "data": json.loads(res["data_json"])}
    c.close()
    darkroom_modules = sorted(m for m in sys.modules if m.split(".")[0] in
                              ("agents", "processors", "sinks", "schemas"))
    print(json.dumps({"final": final, "results": results, "darkroom_modules": darkroom_modules},
                     default=str))  # timestamp-millis fields decode as datetime


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        produce(*args)
    else:
        consume(args[0], args[1], args[2], float(args[3]))
