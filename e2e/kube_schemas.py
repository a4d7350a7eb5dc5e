#!/usr/bin/env python3
"""Writes JSON schemas in the layout kubeconform reads with
`-schema-location '<dir>/{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json'`
(kind in lower case; Group is the part of apiVersion before "/", or the version for core kinds):

  --openapi DIR   Kubernetes' OpenAPI v3 documents (api/openapi-spec/v3 of k8s.io/kubernetes): one file
                  per kind that has x-kubernetes-group-version-kind, its definitions referenced locally;
  --crds FILE…    CustomResourceDefinitions: one file per served version's openAPIV3Schema.

Strict like the API server's field validation: an object schema with properties and no
additionalProperties gets additionalProperties: false (CRDs: unless x-kubernetes-preserve-unknown-fields),
so a misspelt or misplaced field is an error. `nullable` becomes a "null" type. Used by e2e/tools
(cached per version) and by e2e/checks/helm for the repository's own CRD.
"""

import argparse
import json
import pathlib
import sys

import yaml

# A YAML scalar "=" (an enum value in the prometheus-operator's CRDs) is the obscure value tag to
# PyYAML: read it as the string it is.
yaml.SafeLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def strict(schema):
    """Returns schema with additionalProperties: false on closed objects and nullable spelled in JSON
    schema, walking only the places that hold schemas (a property may be called "nullable")."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {k: strict(v) for k, v in out[key].items()}
    for key in ("items", "additionalProperties", "not", "additionalItems"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [strict(v) for v in out[key]]
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") is True:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def refs(node, found):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/components/schemas/"):
            found.add(r.rsplit("/", 1)[1])
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def relink(node):
    if isinstance(node, dict):
        return {k: (v.replace("#/components/schemas/", "#/definitions/") if k == "$ref" and isinstance(v, str) else relink(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [relink(v) for v in node]
    return node


def name(kind, group, version):
    return f"{kind.lower()}-{group or version}-{version}.json"


def from_openapi(directory, out):
    written = 0
    for path in sorted(pathlib.Path(directory).glob("*_openapi.json")):
        schemas = json.loads(path.read_text()).get("components", {}).get("schemas", {})
        for key, schema in schemas.items():
            gvks = schema.get("x-kubernetes-group-version-kind") or []
            # A List or an options type carries a GVK too; a kind is an object with metadata.
            if "metadata" not in schema.get("properties", {}) or key.endswith("List"):
                continue
            needed, todo = set(), [key]
            while todo:
                k = todo.pop()
                if k in needed:
                    continue
                needed.add(k)
                found = set()
                refs(schemas[k], found)
                todo.extend(found - needed)
            definitions = {k: strict(relink(schemas[k])) for k in sorted(needed) if k != key}
            doc = strict(relink(schema))
            doc["definitions"] = definitions
            for gvk in gvks:
                target = out / name(gvk["kind"], gvk.get("group", ""), gvk["version"])
                if not target.exists():
                    target.write_text(json.dumps(doc))
                    written += 1
    return written


def from_crds(files, out):
    written = 0
    for f in files:
        for doc in yaml.safe_load_all(pathlib.Path(f).read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                schema = v.get("schema", {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                schema = strict(schema)
                # metadata is validated by the API server itself, not by the CRD's schema.
                props = schema.setdefault("properties", {})
                props["metadata"] = {"type": "object"}
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                (out / name(spec["names"]["kind"], spec["group"], v["name"])).write_text(json.dumps(schema))
                written += 1
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--openapi")
    p.add_argument("--crds", nargs="*", default=[])
    a = p.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = (from_openapi(a.openapi, out) if a.openapi else 0) + from_crds(a.crds, out)
    if n == 0:
        sys.exit("kube_schemas.py: wrote no schema (wrong --openapi directory or --crds files?)")
    print(f"wrote {n} schemas to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
