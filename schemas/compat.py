"""Backward-compatibility check of two Avro schemas (can a reader with NEW read data written with OLD?).

Follows the schema-resolution rules of the Avro specification, with the *old* schema as the writer
and the *new* one as the reader:

- records match by unqualified name (or a reader alias); every reader field absent from the writer
  needs a default, and that default must fit the field's type (the first branch of a union);
  writer fields the reader dropped are skipped, which is allowed;
- enums match by name; a writer symbol missing from the reader needs the reader enum's ``default``;
- fixed match by name and size; arrays and maps recurse into items and values;
- primitives match when equal or promotable (int -> long, float, double; long -> float, double;
  float -> double; string <-> bytes);
- unions: every branch the writer may have written must match some reader branch (or the reader
  itself when it is not a union);
- stricter than the specification on purpose: a change of ``logicalType`` (say ``timestamp-millis``
  to ``timestamp-micros`` or to a bare ``long``) is reported, because the bytes still resolve but
  their meaning changes.

Schemas may be given as loaded from ``.avsc`` (short names, inherited namespaces) or as parsed by
fastavro (full names). The result is a list of sentences, each starting with the path of the
problem (``SubscriptionEvent.devices[].stb_serial: ...``); an empty list means compatible.
"""

from __future__ import annotations

from typing import Any

__all__ = ["backward_problems"]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


def backward_problems(old_schema: Any, new_schema: Any) -> list[str]:
    """Why data written with ``old_schema`` cannot be read with ``new_schema`` (empty when it can)."""
    return _Checker(old_schema, new_schema).run()


class _Node:
    """One type of one side, resolved: ``kind`` is a primitive name, a complex kind or ``union``."""

    __slots__ = ("kind", "logical", "namespace", "schema")

    def __init__(self, schema: Any, kind: str, namespace: str, logical: str | None = None) -> None:
        self.schema = schema
        self.kind = kind
        self.namespace = namespace
        self.logical = logical

    @property
    def name(self) -> str:
        """Unqualified name of a named type."""
        return str(self.schema["name"]).rsplit(".", 1)[-1]

    def describe(self) -> str:
        if self.kind in _NAMED:
            return f"{self.kind} {self.name}"
        if self.logical:
            return f"{self.kind} ({self.logical})"
        return self.kind


class _Side:
    """The named types of one schema, indexed by full name, so references can be followed."""

    def __init__(self, schema: Any) -> None:
        self.names: dict[str, Any] = {}
        self._index(schema, "")

    @staticmethod
    def full_name(schema: dict[str, Any], namespace: str) -> tuple[str, str]:
        """(full name, namespace its children inherit) of a named type definition."""
        name = str(schema["name"])
        if "." in name:
            return name, name.rsplit(".", 1)[0]
        own = schema.get("namespace", namespace) or ""
        return (f"{own}.{name}" if own else name), own

    def _index(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._index(branch, namespace)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in _NAMED:
                full, namespace = self.full_name(schema, namespace)
                self.names.setdefault(full, schema)
                for field in schema.get("fields", []) if kind in ("record", "error") else []:
                    self._index(field["type"], namespace)
            elif kind == "array":
                self._index(schema["items"], namespace)
            elif kind == "map":
                self._index(schema["values"], namespace)
            elif isinstance(kind, dict | list):
                self._index(kind, namespace)

    def resolve(self, schema: Any, namespace: str) -> _Node:
        if isinstance(schema, list):
            return _Node(schema, "union", namespace)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _Node(schema, schema, namespace)
            candidates = [schema] if "." in schema else [f"{namespace}.{schema}", schema]
            for full in candidates:
                if full in self.names:
                    return self.resolve(self.names[full], namespace)
            raise ValueError(f"unknown type name {schema!r}")
        kind = schema["type"]
        if isinstance(kind, dict | list) or (isinstance(kind, str) and kind not in _PRIMITIVES
                                              and kind not in _NAMED and kind not in ("array", "map")):
            inner = self.resolve(kind, namespace)
            return inner
        if kind in _NAMED:
            _, child_namespace = self.full_name(schema, namespace)
            return _Node(schema, "record" if kind == "error" else kind, child_namespace)
        return _Node(schema, kind, namespace, schema.get("logicalType"))


class _Checker:
    def __init__(self, old_schema: Any, new_schema: Any) -> None:
        self.old_schema = old_schema
        self.new_schema = new_schema
        self.writer = _Side(old_schema)
        self.reader = _Side(new_schema)
        self.problems: list[str] = []
        self._seen: set[tuple[int, int]] = set()

    def run(self) -> list[str]:
        w = self.writer.resolve(self.old_schema, "")
        r = self.reader.resolve(self.new_schema, "")
        self.compare(w, r, r.name if r.kind == "record" else "")
        return self.problems

    def problem(self, path: str, text: str) -> None:
        self.problems.append(f"{path or '(root)'}: {text}")

    # --- matching -----------------------------------------------------------------------------

    def shallow_match(self, w: _Node, r: _Node) -> bool:
        """Whether resolution would pick reader type ``r`` for writer type ``w`` (names and kinds)."""
        if w.kind in _NAMED or r.kind in _NAMED:
            return w.kind == r.kind and (w.name == r.name or w.name in _aliases(r.schema))
        if w.kind == r.kind:
            return True
        return r.kind in _PROMOTIONS.get(w.kind, frozenset())

    def pick_branch(self, w: _Node, union: _Node) -> _Node | None:
        branches = [self.reader.resolve(b, union.namespace) for b in union.schema]
        exact = [b for b in branches if b.kind == w.kind and self.shallow_match(w, b)]
        if exact:
            return exact[0]
        promoted = [b for b in branches if self.shallow_match(w, b)]
        return promoted[0] if promoted else None

    def compare(self, w: _Node, r: _Node, path: str) -> None:
        if w.kind == "union":
            for branch in w.schema:
                self.compare(self.writer.resolve(branch, w.namespace), r, path)
            return
        if r.kind == "union":
            chosen = self.pick_branch(w, r)
            if chosen is None:
                self.problem(path, f"{w.describe()} written by the old schema matches no branch of the new union")
                return
            r = chosen
        if not self.shallow_match(w, r):
            if w.kind in _NAMED and w.kind == r.kind:
                self.problem(path, f"{w.kind} renamed from {w.name} to {r.name}")
            else:
                self.problem(path, f"type changed from {w.describe()} to {r.describe()}")
            return
        if w.logical != r.logical:
            self.problem(path, f"logical type changed from {w.logical or 'none'} to {r.logical or 'none'}")
        if r.kind == "record":
            self.compare_records(w, r, path)
        elif r.kind == "enum":
            self.compare_enums(w, r, path)
        elif r.kind == "fixed" and w.schema.get("size") != r.schema.get("size"):
            self.problem(path, f"fixed {r.name} size changed from {w.schema.get('size')} to {r.schema.get('size')}")
        elif r.kind == "array":
            self.compare(self.writer.resolve(w.schema["items"], w.namespace),
                         self.reader.resolve(r.schema["items"], r.namespace), f"{path}[]")
        elif r.kind == "map":
            self.compare(self.writer.resolve(w.schema["values"], w.namespace),
                         self.reader.resolve(r.schema["values"], r.namespace), f"{path}{{}}")

    def compare_records(self, w: _Node, r: _Node, path: str) -> None:
        key = (id(w.schema), id(r.schema))
        if key in self._seen:  # recursive types: this pair is already being checked
            return
        self._seen.add(key)
        written = {f["name"]: f for f in w.schema.get("fields", [])}
        for field in r.schema.get("fields", []):
            field_path = f"{path}.{field['name']}" if path else field["name"]
            names = [field["name"], *_aliases(field)]
            source = next((written[n] for n in names if n in written), None)
            if source is not None:
                self.compare(self.writer.resolve(source["type"], w.namespace),
                             self.reader.resolve(field["type"], r.namespace), field_path)
            elif "default" not in field:
                self.problem(field_path, "new field without a default (old data has no value for it)")
            else:
                complaint = self.default_problem(self.reader.resolve(field["type"], r.namespace), field["default"])
                if complaint:
                    self.problem(field_path, f"default {field['default']!r} does not fit: {complaint}")

    def compare_enums(self, w: _Node, r: _Node, path: str) -> None:
        removed = [s for s in w.schema.get("symbols", []) if s not in set(r.schema.get("symbols", []))]
        if removed and "default" not in r.schema:
            self.problem(path, f"enum {r.name} lost symbols {', '.join(removed)} and has no default symbol")

    def default_problem(self, node: _Node, default: Any) -> str | None:
        """Why ``default`` is not a value of ``node`` (for a union: of its first branch), or None."""
        if node.kind == "union":
            if not node.schema:
                return "empty union"
            return self.default_problem(self.reader.resolve(node.schema[0], node.namespace), default)
        checks: dict[str, Any] = {
            "null": lambda v: v is None,
            "boolean": lambda v: isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "string": lambda v: isinstance(v, str),
            "bytes": lambda v: isinstance(v, str),
            "fixed": lambda v: isinstance(v, str),
            "enum": lambda v: isinstance(v, str) and v in node.schema.get("symbols", []),
            "array": lambda v: isinstance(v, list),
            "map": lambda v: isinstance(v, dict),
            "record": lambda v: isinstance(v, dict),
        }
        check = checks.get(node.kind)
        if check is not None and not check(default):
            return f"expected a {node.describe()} value (a union's default must match its first branch)"
        return None


def _aliases(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return []
    return [str(a).rsplit(".", 1)[-1] for a in schema.get("aliases", [])]
