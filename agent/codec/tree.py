"""Typed (pyangbind) objects <-> RFC 7951 JSON trees (plain dicts/lists), generically.

The walker never builds a child that does not exist yet (the rewritten bindings build children
lazily), so dumping a sparse message costs only what is set.  Values follow RFC 7951:
enumerations and decimal64 as strings, 64-bit integers as strings, member names qualified with
their module where it differs from the parent's.

Loading goes through the generated ``_set_*`` methods and list ``add``, so every pyangbind type
check applies; a failure is reported as ``CodecError`` naming the path of the field.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .errors import CodecError

# Leaf value kinds, cached per leaf class.
ENUM, DECIMAL, INT64, INT, BOOL, STR = "enum", "decimal", "int64", "int", "bool", "str"

_members_cache: dict[type, tuple[tuple[str, str, str, str], ...]] = {}
_by_name_cache: dict[type, dict[str, tuple[str, str]]] = {}
_kind_cache: dict[type, str] = {}


def generated_class(node: Any) -> type:
    """The pyangbind-generated class of a node (unwrapping the dyn wrapper)."""
    cls = type(node)
    return getattr(cls, "_base_type", cls) if hasattr(cls, "_yang_name") else cls


def members(cls: type) -> tuple[tuple[str, str, str, str], ...]:
    """(python attr, private slot name, yang name, defining module) per element of *cls*."""
    cached = _members_cache.get(cls)
    if cached is not None:
        return cached
    out = []
    probe = cls()
    for attr in cls._pyangbind_elements:
        child = getattr(probe, attr)
        module = getattr(child, "_defining_module", None) or ""
        out.append((attr, f"_{cls.__name__.lstrip('_')}__{attr}", child._yang_name, module))
    result = tuple(out)
    _members_cache[cls] = result
    return result


def leaf_kind(value: Any) -> str:
    cls = type(value)
    kind = _kind_cache.get(cls)
    if kind is None:
        kind = _classify(cls)
        _kind_cache[cls] = kind
    return kind


def _classify(cls: type) -> str:
    if hasattr(cls, "_enumeration_dict"):
        return ENUM
    if issubclass(cls, Decimal):
        return DECIMAL
    if issubclass(cls, bool) or getattr(cls, "_pybind_base_class", "").endswith("YANGBool") or any(
            c.__name__ == "YANGBool" for c in cls.__mro__):
        return BOOL
    if issubclass(cls, int):
        sizes = [getattr(c, "_restricted_int_size", None) for c in cls.__mro__]
        return INT64 if 64 in sizes else INT
    return STR


def _json_value(value: Any) -> Any:
    kind = leaf_kind(value)
    if kind == INT:
        return int(value)
    if kind == BOOL:
        return bool(value)
    if kind in (ENUM, STR):
        return str(value)
    if kind == DECIMAL:
        return str(value)
    return str(int(value))  # INT64


def _is_container(node: Any) -> bool:
    return hasattr(node, "_pyangbind_elements")


def dump(node: Any, module: str = "") -> dict[str, Any]:
    """RFC 7951 members of container *node* (only what is set)."""
    out: dict[str, Any] = {}
    for _attr, slot, yname, mod in members(generated_class(node)):
        child = getattr(node, slot, None)
        if child is None:
            continue
        name = yname if not mod or mod == module else f"{mod}:{yname}"
        if _is_container(child):
            sub = dump(child, mod or module)
            if sub or (getattr(child, "_presence", False) and child._present()):
                out[name] = sub
        elif hasattr(child, "_members"):  # YANG list
            entries = [dump(e, mod or module) for e in child._members.values()]
            if entries:
                out[name] = entries
        elif hasattr(child, "_list"):  # leaf-list
            if len(child._list):
                out[name] = [_json_value(v) for v in child._list]
        elif child._changed():
            out[name] = _json_value(child)
    return out


# ----------------------------------------------------------------------------- loading
def _strip(name: str) -> tuple[str, str]:
    mod, _, local = name.rpartition(":")
    return mod, local


def _convert_in(value: Any, path: str) -> Any:
    """JSON scalar -> value acceptable to a pyangbind setter (type checks happen there)."""
    if isinstance(value, bool | int | str | Decimal):
        return value
    if isinstance(value, float):
        raise CodecError(path, "floating-point numbers are not allowed (decimal64 is a string)")
    raise CodecError(path, f"expected a scalar, got {type(value).__name__}")


def _set_leaf(node: Any, attr: str, value: Any, path: str) -> None:
    try:
        getattr(node, f"_set_{attr}")(value)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CodecError(path, f"invalid value {value!r}: {_pyangbind_reason(exc)}") from None


def _pyangbind_reason(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, dict) and "error-string" in arg:
        return str(arg["error-string"])
    return str(arg)


def load(node: Any, data: dict[str, Any], path: str = "", module: str = "") -> None:
    """Set the members of container *node* from RFC 7951 *data*; strict about names."""
    if not isinstance(data, dict):
        raise CodecError(path or "/", f"expected an object, got {type(data).__name__}")
    cls = generated_class(node)
    by_name = _by_name_cache.get(cls)
    if by_name is None:
        by_name = {yname: (attr, mod) for attr, _slot, yname, mod in members(cls)}
        _by_name_cache[cls] = by_name
    for name, value in data.items():
        qual, local = _strip(name)
        here = f"{path}/{name}"
        entry = by_name.get(local)
        if entry is None or (qual and qual != (entry[1] or module)):
            raise CodecError(here, "unknown member")
        attr, mod = entry
        child = getattr(node, attr)
        if _is_container(child):
            load(child, value, here, mod or module)
        elif hasattr(child, "_members"):
            _load_list(child, value, here, mod or module)
        elif hasattr(child, "_list"):
            if not isinstance(value, list):
                raise CodecError(here, "expected an array (leaf-list)")
            _set_leaf(node, attr, [_convert_in(v, here) for v in value], here)
        else:
            _set_leaf(node, attr, _convert_in(value, here), here)


def _load_list(lst: Any, value: Any, path: str, module: str) -> None:
    if not isinstance(value, list):
        raise CodecError(path, "expected an array (list)")
    keyname = lst._keyval
    for i, item in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise CodecError(here, "expected an object (list entry)")
        if not keyname:
            entry = lst[lst.add()]
            load(entry, item, here, module)
            continue
        key_yang = keyname.replace("_", "-")
        if key_yang not in item:
            raise CodecError(here, f"missing key '{key_yang}'")
        key = _convert_in(item[key_yang], f"{here}/{key_yang}")
        try:
            entry = lst.add(key)
        except KeyError as exc:
            msg = str(exc.args[0]) if exc.args else str(exc)
            if "already defined" in msg:
                raise CodecError(here, f"duplicate key {key!r}") from None
            raise CodecError(f"{here}/{key_yang}", f"invalid value {key!r}") from None
        rest = {k: v for k, v in item.items() if k != key_yang}
        load(entry, rest, here, module)
