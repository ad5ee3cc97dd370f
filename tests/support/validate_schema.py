#!/usr/bin/env python3
"""Validates Kubernetes objects against the JSON schemas in a directory (tests/support/schemas).

usage: validate_schema.py SCHEMA_DIR OBJECT_FILE...   (YAML or JSON; exit 0 when all are valid)

Each object is checked against the schema whose `kind` (a const or an enum under
`properties.kind`) names the object's kind; an object no schema is for is an error. Schemas
refer to each other by file name (`"$ref": "kubernetes.json#/definitions/container"`), and
are checked themselves first (JSON Schema draft 7).
"""
import json
import pathlib
import sys

import jsonschema
import referencing
import yaml


def load_schemas(directory):
    schemas = []
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        schemas.append(schema)
    registry = referencing.Registry().with_resources(
        (s["$id"], referencing.Resource.from_contents(s, default_specification=referencing.jsonschema.DRAFT7))
        for s in schemas
    )
    return schemas, registry


def kinds_of(schema):
    kind = schema.get("properties", {}).get("kind", {})
    return [kind["const"]] if "const" in kind else kind.get("enum", [])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    schemas, registry = load_schemas(sys.argv[1])
    failed = False
    for path in sys.argv[2:]:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        for document in documents:
            kind = document.get("kind") if isinstance(document, dict) else None
            metadata = (document.get("metadata") or {}) if kind else {}
            name = metadata.get("name") or metadata.get("generateName")
            matching = [s for s in schemas if kind in kinds_of(s)]
            if not matching:
                print(f"{path}: {kind}: no schema is for this kind")
                failed = True
                continue
            validator = jsonschema.Draft7Validator(matching[0], registry=registry)
            errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
            for error in errors:
                where = "/".join(str(p) for p in error.absolute_path)
                print(f"{path}: {kind} {name}: /{where}: {error.message}")
            if errors:
                failed = True
            else:
                print(f"{path}: {kind} {name}: valid against {matching[0]['$id'].rsplit('/', 1)[-1]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
