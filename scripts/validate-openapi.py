#!/usr/bin/env python3
"""Validates tally's OpenAPI document and real responses against it.

    validate-openapi.py DOC RESPONSES

DOC is the OpenAPI 3.1 document; RESPONSES a JSON Lines file of recorded
answers, one {"method", "path" (the documented template), "status", "body"}
per line. Checks, failing with a message on the first problem:
  1. the document is valid OpenAPI (openapi-spec-validator);
  2. every example in it validates against the schema it illustrates;
  3. every recorded answer's status is documented for its operation and its
     body validates against that status's schema (JSON Schema 2020-12, the
     dialect of OpenAPI 3.1);
  4. every operation was answered at least once with a success and once
     with an error, of those it documents.
"""
import json
import sys

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = "urn:tally-openapi"


def pointer(*parts):
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def main(doc_path, responses_path):
    doc = json.load(open(doc_path))
    validate(doc)
    registry = Registry().with_resource(ROOT, Resource.from_contents(doc, default_specification=DRAFT202012))

    def check(value, *at):
        schema = {"$ref": ROOT + pointer(*at)}
        errors = sorted(Draft202012Validator(schema, registry=registry).iter_errors(value), key=str)
        if errors:
            sys.exit(f"{pointer(*at)}: {value!r} does not validate: {errors[0].message}")

    examples = 0
    for name, schema in doc["components"]["schemas"].items():
        for example in schema.get("examples", []) + ([schema["example"]] if "example" in schema else []):
            check(example, "components", "schemas", name)
            examples += 1
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, response in op.get("responses", {}).items():
                for ctype, content in response.get("content", {}).items():
                    if "example" in content and "schema" in content:
                        check(content["example"], "paths", path, method, "responses", status, "content", ctype,
                              "schema")
                        examples += 1

    seen = {}
    for line in open(responses_path):
        answer = json.loads(line)
        method, path, status = answer["method"].lower(), answer["path"], str(answer["status"])
        op = doc["paths"].get(path, {}).get(method)
        if op is None:
            sys.exit(f"{method.upper()} {path}: not in the document")
        if status not in op["responses"]:
            sys.exit(f"{method.upper()} {path}: answered {status}, which is not documented "
                     f"({', '.join(op['responses'])})")
        content = op["responses"][status].get("content", {}).get("application/json")
        if content and "schema" in content:
            check(answer["body"], "paths", path, method, "responses", status, "content", "application/json",
                  "schema")
        seen.setdefault((method, path), set()).add(status)

    for path, item in doc["paths"].items():
        for method, op in item.items():
            statuses = seen.get((method, path), set())
            for kind, is_kind in [("successful", lambda s: s.startswith("2")),
                                  ("error", lambda s: not s.startswith("2"))]:
                if any(map(is_kind, op["responses"])) and not any(map(is_kind, statuses)):
                    sys.exit(f"{method.upper()} {path}: no {kind} answer was recorded")
    answered = sum(len(s) for s in seen.values())
    print(f"openapi: document valid, {examples} examples valid, {answered} (operation, status) pairs valid")


if __name__ == "__main__":
    main(*sys.argv[1:])
