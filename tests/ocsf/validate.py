"""Validates OCSF events (one JSON object per line on stdin) against the OCSF schema that the
PyPI package pydantic-ocsf ships: each event through the package's model of its class, and
every attribute the schema marks required (the class's own and those it inherits) present.
Prints `class_uid count` per class seen; exits 1 naming the first event that fails."""

import json
import sys
from collections import Counter
from importlib.resources import files

from ocsf.v1_7_0 import events as ocsf_events

SCHEMA = json.loads(files("ocsf").joinpath("schemas/v1_7_0.json").read_text())
CATEGORY = {"iam": 3, "network": 4, "application": 6, "findings": 2, "system": 1, "discovery": 5}


def class_uid(name, spec):
    # The schema keeps the uid local to its category; the category comes from the class or
    # the class it extends.
    cat = spec.get("category")
    probe = spec
    while cat is None and probe.get("extends") in SCHEMA["events"]:
        probe = SCHEMA["events"][probe["extends"]]
        cat = probe.get("category")
    return CATEGORY.get(cat, 0) * 1000 + spec["uid"] if cat else spec["uid"]


def required(name):
    out, seen = set(), set()
    while name and name not in seen:
        seen.add(name)
        spec = SCHEMA["events"].get(name) or {}
        for attr, d in spec.get("attributes", {}).items():
            if isinstance(d, dict) and d.get("requirement") == "required":
                out.add(attr)
        name = spec.get("extends")
    return out


def model_name(schema_name):
    return "".join(p.capitalize() for p in schema_name.split("_"))


BY_UID = {}
for name, spec in SCHEMA["events"].items():
    try:
        BY_UID[class_uid(name, spec)] = name
    except KeyError:
        pass

seen = Counter()
for n, line in enumerate(sys.stdin, 1):
    if not line.strip():
        continue
    event = json.loads(line)
    uid = event.get("class_uid")
    name = BY_UID.get(uid)
    if name is None:
        print(f"line {n}: class_uid {uid} is no OCSF 1.7.0 class", file=sys.stderr)
        sys.exit(1)
    missing = sorted(a for a in required(name) | {"class_uid", "category_uid", "type_uid", "activity_id"} if a not in event)
    if missing:
        print(f"line {n}: {name} ({uid}) lacks required {missing}: {line.strip()}", file=sys.stderr)
        sys.exit(1)
    if event["type_uid"] != uid * 100 + event["activity_id"]:
        print(f"line {n}: type_uid {event['type_uid']} is not class_uid*100+activity_id", file=sys.stderr)
        sys.exit(1)
    model = getattr(ocsf_events, model_name(name))
    try:
        model.model_validate(event)
    except Exception as e:  # pydantic.ValidationError and the package's own
        print(f"line {n}: {name} ({uid}) does not validate: {e}\n{line.strip()}", file=sys.stderr)
        sys.exit(1)
    seen[uid] += 1

for uid, count in sorted(seen.items()):
    print(uid, count)
