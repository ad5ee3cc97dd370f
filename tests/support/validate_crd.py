#!/usr/bin/env python3
"""Validates Kubernetes objects against the openAPIV3Schema of a CustomResourceDefinition.

usage: validate_crd.py CRD_FILE OBJECT_FILE...   (YAML or JSON; exit 0 when all are valid)

CRD_FILE holds one CustomResourceDefinition; other documents in it, such as the empty one an
upstream file's trailing `---` opens, are skipped.

The CRD's version is the one named by each object's apiVersion. The schema is checked with
JSON Schema draft 7, which covers the OpenAPI v3 subset structural CRD schemas use; the
x-kubernetes-* extensions are not JSON Schema and are ignored.
"""
import sys

import jsonschema
import yaml


def schema_for(crd, api_version):
    group, _, version = api_version.partition("/")
    if crd["spec"]["group"] != group:
        sys.exit(f"{api_version}: the CRD is for group {crd['spec']['group']}")
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    sys.exit(f"{api_version}: the CRD has no version {version}")


def load_crd(path):
    with open(path) as f:
        crds = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        sys.exit(f"{path}: {len(crds)} CustomResourceDefinitions, expected one")
    return crds[0]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    crd = load_crd(sys.argv[1])
    failed = False
    for path in sys.argv[2:]:
        with open(path) as f:
            for document in yaml.safe_load_all(f):
                if document is None:
                    continue
                if document.get("kind") != crd["spec"]["names"]["kind"]:
                    print(f"{path}: kind {document.get('kind')} is not {crd['spec']['names']['kind']}")
                    failed = True
                    continue
                validator = jsonschema.Draft7Validator(schema_for(crd, document["apiVersion"]))
                for error in validator.iter_errors(document):
                    where = "/".join(str(p) for p in error.absolute_path)
                    print(f"{path}: {where}: {error.message}")
                    failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
