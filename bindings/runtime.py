"""Fast drop-in replacements for pyangbind's type factories, used by the rewritten bindings.

Theory of operation
-------------------
pyangbind's generated code calls ``YANGDynClass``, ``RestrictedClassType``, ``TypedListType``
and ``YANGListType`` for every object it builds.  Each call *creates a new class* (and the
restricted types rebuild their checks and recompile their regexes for every instance), which
is why one mitigation request costs tens of milliseconds.

``bindings.rewrite`` hoists every call whose arguments are static to module level, so each
schema node's classes are created once, at import.  This module provides the factories those
hoisted calls use:

- ``RestrictedClassType`` / ``TypedListType`` / ``RestrictedPrecisionDecimalType``: same
  contract as pyangbind's (class attributes ``_restriction_dict``, ``_enumeration_dict``,
  ``_restricted_class_base``, ``_restricted_int_size``, ``getValue``), but the checks and
  regexes are built once per class.  They do not mutate their base class (pyangbind's append to
  the base's ``_restricted_class_base`` is what makes naive memoisation wrong).
- ``dyn_factory(**static)``: the part of ``YANGDynClass`` that does not depend on the instance
  (base type, YANG name, namespace, choice, ...) becomes one class; calling it with the
  per-instance arguments (``parent``, ``path_helper``, ``extmethods``, ``load``) builds the
  object.  Unions pick their member type per value, as pyangbind does.
- ``YANGListType``: the list class refers to its owner through ``self._parent`` (set by the
  wrapping dyn class) instead of a closure, so one class serves every instance.

Anything the fast path does not cover (extension methods) falls back to pyangbind itself.
Objects stay compatible with ``pyangbind.lib.pybindJSON`` and ``serialise``.
"""

from __future__ import annotations

import collections
import collections.abc
import copy
import uuid
from decimal import Decimal
from typing import Any

import regex
from pyangbind.lib import yangtypes as _pb
from pyangbind.lib.yangtypes import (  # noqa: F401 - re-exported for the generated code
    ReferenceType,
    YANGBinary,
    YANGBitsType,
    YANGBool,
    safe_name,
)

_TYPE_NAME = regex.compile(r"<(type|class) '(?P<class>.*)'>")
_RANGE = regex.compile(r"(?P<low>\-?[0-9\.]+|min)([ ]+)?\.\.([ ]+)?(?P<high>(\-?[0-9\.]+|max))")
_SINGLE = regex.compile(r"(?P<value>\-?[0-9\.]+)")


def _type_hint(t: Any) -> str:
    return _TYPE_NAME.sub(r"\g<class>", str(t))


def _xsd_pattern(pattern: str) -> str:
    """Anchor an XSD pattern for ``regex.match`` exactly as pyangbind does."""
    trimmed = pattern.endswith("$")
    body = pattern[:-1] if trimmed else pattern
    body = body.replace("$", r"\$") + ("$" if trimmed else "")
    if not body.startswith("^"):
        body = "^" + body
    if not body.endswith("$"):
        body += "$"
    return body


def _bounds(spec: str, convert: Any) -> tuple[Any, ...]:
    m = _RANGE.match(spec)
    if m:
        low, high = m.group("low"), m.group("high")
        return (None if low == "min" else convert(low), None if high == "max" else convert(high))
    m = _SINGLE.match(spec)
    if m:
        return (convert(m.group("value")),)
    raise ValueError("Invalid range or length argument specified")


def _range_test(tuples: list[tuple[Any, ...]], length: bool) -> Any:
    def test(value: Any) -> bool:
        if length:
            value = len(value)
        for t in tuples:
            if len(t) == 2:
                if (t[0] is None or value >= t[0]) and (t[1] is None or value <= t[1]):
                    return True
            elif value == float(t[0]):
                return True
        return False

    return test


def _enum_dict(arg: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy({k: v for k, v in arg.items() if not k.startswith("@")})
    used = {int(v["value"]) for v in new.values() if "value" in v}
    c = 0
    for v in new.values():
        while c in used:
            c += 1
        if "value" not in v:
            v["value"] = c
        c += 1
    return new


def RestrictedClassType(*args: Any, **kwargs: Any) -> type:  # noqa: N802 - pyangbind's name
    """A subclass of ``base_type`` whose constructor enforces YANG restrictions."""
    base_type = kwargs.pop("base_type", str)
    restriction_type = kwargs.pop("restriction_type", None)
    restriction_arg = kwargs.pop("restriction_arg", None)
    restriction_dict = kwargs.pop("restriction_dict", None)
    int_size = kwargs.pop("int_size", None)
    if restriction_dict is None:
        if restriction_type is None or restriction_arg is None:
            raise ValueError("must specify either a restriction dictionary or a type and argument")
        restriction_dict = {restriction_type: restriction_arg}

    tests: list[Any] = []
    enumeration: dict[str, Any] | None = None
    for rtype, rarg in restriction_dict.items():
        if rtype == "pattern":
            compiled = regex.compile(_xsd_pattern(rarg))
            tests.append(lambda v, _c=compiled: _c.match(str(v)) is not None)
        elif rtype == "range":
            tests.append(_range_test([_bounds(s, base_type) for s in rarg], length=False))
        elif rtype == "length":
            tests.append(_range_test([_bounds(s, int) for s in rarg], length=True))
        elif rtype == "dict_key":
            enumeration = _enum_dict(rarg)
            tests.append(lambda v, _d=enumeration: str(v) in _d)
        else:
            raise TypeError("unsupported restriction type")
    frozen_tests = tuple(tests)
    hint = [*getattr(base_type, "_restricted_class_base", []), _type_hint(base_type)]

    def __new__(cls: type, *a: Any, **kw: Any) -> Any:  # noqa: N807
        if a:
            try:
                v = base_type(a[0])
            except Exception as exc:
                raise ValueError(f"{a[0]!r} is not a valid {_type_hint(base_type)}") from exc
            for t in frozen_tests:
                if not t(v):
                    raise ValueError(f"{a[0]} does not match a restricted type")
        try:
            return base_type.__new__(cls, *a, **kw)
        except TypeError:
            return base_type.__new__(cls)

    def getValue(self: Any, *a: Any, **kw: Any) -> Any:  # noqa: N802 - pyangbind's name
        if enumeration is not None and kw.pop("mapped", False):
            return enumeration[str(self)]["value"]
        return self

    ns: dict[str, Any] = {
        "__new__": __new__,
        "getValue": getValue,
        "_pybind_generated_by": "RestrictedClassType",
        "_restricted_class_base": hint,
        "_restricted_int_size": int_size,
        "_restriction_dict": restriction_dict,
        "_restriction_tests": list(frozen_tests),
        "__module__": __name__,
    }
    if enumeration is not None:
        ns["_enumeration_dict"] = enumeration
    return type("RestrictedClass", (base_type,), ns)


def RestrictedPrecisionDecimalType(*args: Any, **kwargs: Any) -> type:  # noqa: N802
    """``Decimal`` rounded to a fixed number of fraction digits (YANG decimal64)."""
    precision = kwargs.pop("precision", False)
    quantum = Decimal(str(10.0 ** (-1.0 * int(precision))))

    class RestrictedPrecisionDecimal(Decimal):
        _precision = 10.0 ** (-1.0 * int(precision))
        _pybind_generated_by = "RestrictedPrecisionDecimal"

        def __new__(cls, *a: Any, **kw: Any) -> RestrictedPrecisionDecimal:
            value = Decimal(a[0]).quantize(quantum) if a else Decimal(0)
            return Decimal.__new__(cls, value, **kw)

    return RestrictedPrecisionDecimal


def TypedListType(*args: Any, **kwargs: Any) -> type:  # noqa: N802
    """A list that only accepts members of ``allowed_type`` (a type or a list of types)."""
    allowed = kwargs.pop("allowed_type", str)
    allowed_types = tuple(allowed) if isinstance(allowed, list) else (allowed,)

    class TypedList(collections.abc.MutableSequence):
        _pybind_generated_by = "TypedListType"
        _allowed_type = list(allowed_types)

        def __init__(self, *a: Any, **kw: Any) -> None:
            self._unique = kw.pop("unique", False)
            self._list: list[Any] = []
            if a:
                if isinstance(a[0], list):
                    for i in a[0]:
                        if not self._unique or i not in self._list:
                            self._list.append(self.check(i))
                else:
                    self._list.append(self.check(a[0]))

        def check(self, v: Any) -> Any:
            if self._unique and v in self._list:
                raise ValueError("Values in this list must be unique.")
            for t in allowed_types:
                if isinstance(v, t):
                    return v
                try:
                    kind = getattr(t, "_pybind_generated_by", None)
                    if kind in ("RestrictedClassType", "ReferencePathType", "RestrictedPrecisionDecimal"):
                        return t(v)
                    if kind is None and t is str:
                        if isinstance(v, str):
                            return str(v)
                    elif kind is None:
                        return t(v)
                except Exception:
                    continue
            raise ValueError(f"Cannot add {v} to TypedList (accepts only {list(allowed_types)})")

        def __len__(self) -> int:
            return len(self._list)

        def __getitem__(self, i: Any) -> Any:
            return self._list[i]

        def __delitem__(self, i: Any) -> None:
            del self._list[i]

        def __setitem__(self, i: Any, v: Any) -> None:
            self.insert(i, v)

        def insert(self, i: int, v: Any) -> None:
            self._list.insert(i, self.check(v))

        def append(self, v: Any) -> None:
            if not self._unique or v not in self._list:
                self._list.append(self.check(v))

        def __str__(self) -> str:
            return str(self._list)

        def __iter__(self) -> Any:
            return iter(self._list)

        def __eq__(self, other: object) -> bool:
            return self._list == other

        __hash__ = None  # type: ignore[assignment]

        def get(self, filter: bool = False) -> list[Any]:  # noqa: A002 - pyangbind's signature
            return self._list

    return TypedList


# --------------------------------------------------------------------------- dyn classes
_DYN_SLOTS = ("_parent", "_path_helper", "_extmethods", "_supplied_register_path", "_mchanged",
              "_metadata", "_cpresent")


class _DynMixin:
    """The behaviour pyangbind's ``YANGBaseClass`` adds to every node (see pyangbind)."""

    __slots__ = ()

    def _changed(self) -> bool:
        return self._mchanged

    def _extensions(self) -> Any:
        return self._extensionsd

    def _path(self) -> list[str]:
        return self._register_path()

    def _yang_path(self) -> str:
        return "/" + "/".join(self._register_path())

    def _set(self, choice: Any = False) -> None:
        if choice:
            choices = getattr(self, "__choices__", None)
            if choices is not None:
                cases = choices.get(choice[0])
                if cases is not None:
                    for case, elems in cases.items():
                        if case != choice[1]:
                            for elem in elems:
                                unset = getattr(self, "_unset_" + elem, None)
                                if unset is None:
                                    raise AttributeError("unmapped choice!")
                                unset()
        if self._choice and not choice:
            choice = self._choice
        self._mchanged = True
        if self._presence:
            self._cpresent = True
        parent = self._parent
        if parent and hasattr(parent, "_set"):
            parent._set(choice=choice)

    def _add_metadata(self, k: str, v: Any) -> None:
        self._metadata[k] = v

    def yang_name(self) -> str:
        return self._yang_name

    def default(self) -> Any:
        return self._default

    def __setitem__(self, *args: Any, **kwargs: Any) -> None:
        self._set()
        super().__setitem__(*args, **kwargs)  # type: ignore[misc]

    def append(self, *args: Any, **kwargs: Any) -> None:
        fn = getattr(super(), "append", None)
        if fn is None:
            raise AttributeError(f"{self._base_type} object has no attribute append")
        self._set()
        fn(*args, **kwargs)

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(super(), "pop", None)
        if fn is None:
            raise AttributeError(f"{self._base_type} object has no attribute pop")
        self._set()
        return fn(*args, **kwargs)

    def remove(self, *args: Any, **kwargs: Any) -> None:
        fn = getattr(super(), "remove", None)
        if fn is None:
            raise AttributeError(f"{self._base_type} object has no attribute remove")
        self._set()
        fn(*args, **kwargs)

    def extend(self, *args: Any, **kwargs: Any) -> None:
        fn = getattr(super(), "extend", None)
        if fn is None:
            raise AttributeError(f"{self._base_type} object has no attribute extend")
        self._set()
        fn(*args, **kwargs)

    def insert(self, *args: Any, **kwargs: Any) -> None:
        fn = getattr(super(), "insert", None)
        if fn is None:
            raise AttributeError(f"{self._base_type} object has no attribute insert")
        self._set()
        fn(*args, **kwargs)

    def _register_path(self) -> list[str]:
        if self._supplied_register_path is not None:
            return self._supplied_register_path
        if self._parent is not None and self._parent is not False:
            return self._parent._path() + [self._yang_name]
        return []

    def _set_present(self, present: bool = True) -> None:
        if self._is_container != "container":
            raise AttributeError("Cannot set presence on a non-container")
        self._cpresent = present
        if present is True:
            self._set()
        if present is False:
            self._mchanged = False

    def _present(self) -> bool | None:
        if self._is_container != "container" or self._presence is False:
            return None
        return self._cpresent


_STATIC_KEYS = ("yang_name", "choice", "is_container", "is_leaf", "is_keyval", "register_paths",
                "yang_type", "namespace", "defining_module", "is_config", "presence", "extensions",
                "default")


def _dyn_class(base_type: type, static: dict[str, Any], base_kwargs: dict[str, Any]) -> type:
    yang_type = static.get("yang_type")
    is_container = static.get("is_container", False)
    structural = yang_type in ("container", "list") or is_container == "container"
    passes_helper = is_container in ("list", "container")
    registers = is_container != "list" and static.get("register_paths", True)
    needs_init = base_type.__init__ is not object.__init__

    if base_type.__new__ is object.__new__:
        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
            return object.__new__(cls)
    else:
        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
            return base_type.__new__(cls, *args)

    def __init__(self: Any, *args: Any, parent: Any = False, path_helper: Any = None,  # noqa: N807
                 extmethods: Any = None, load: Any = None, register_path: Any = None) -> None:
        self._parent = parent
        self._path_helper = path_helper
        self._extmethods = extmethods
        self._supplied_register_path = register_path
        self._mchanged = False
        self._metadata = {}
        self._cpresent = False
        if args:
            self._set()
        if path_helper and registers:
            self._path_helper.register(register_path if register_path is not None
                                       else self._register_path(), self)
        if passes_helper:
            kw: dict[str, Any] = {"path_helper": path_helper}
            if load is not None:
                kw["load"] = load
            base_type.__init__(self, *args, **kw)
        elif needs_init:
            try:
                base_type.__init__(self, *args, **base_kwargs)
            except TypeError:
                base_type.__init__(self)

    default = static.get("default", False)
    ns: dict[str, Any] = {
        "__new__": __new__,
        "__init__": __init__,
        "__module__": __name__,
        "_default": default if default else False,
        "_yang_name": static.get("yang_name", False),
        "_choice": static.get("choice", False),
        "_base_type": base_type,
        "_is_leaf": static.get("is_leaf", False),
        "_is_container": is_container,
        "_is_config": static.get("is_config", True),
        "_extensionsd": static.get("extensions"),
        "_is_keyval": static.get("is_keyval", False),
        "_register_paths": static.get("register_paths", True),
        "_namespace": static.get("namespace"),
        "_yang_type": yang_type,
        "_defining_module": static.get("defining_module"),
        "_presence": static.get("presence"),
        "_pybind_base_class": _type_hint(base_type),
    }
    if structural:
        ns["__slots__"] = _DYN_SLOTS
    return type("YANGBaseClass", (_DynMixin, base_type), ns)


def dyn_factory(**static: Any) -> Any:
    """Build once what ``YANGDynClass`` builds per call; return a constructor for instances."""
    base = static.pop("base", False)
    if not base:
        raise TypeError("must have a base type")
    node = {k: static.pop(k) for k in _STATIC_KEYS if k in static}
    base_kwargs = static  # what is left goes to the base type's constructor (e.g. unique=True)

    def slow(*args: Any, **kwargs: Any) -> Any:
        return _pb.YANGDynClass(*args, base=base, **node, **base_kwargs, **kwargs)

    if isinstance(base, list):
        classes = [_dyn_class(b, node, base_kwargs) for b in base]

        def make_union(*args: Any, extmethods: Any = None, **kwargs: Any) -> Any:
            if extmethods:
                return slow(*args, extmethods=extmethods, **kwargs)
            if not args:
                return classes[0](**kwargs)
            for candidate, cls in zip(base, classes, strict=True):
                try:
                    candidate(args[0])
                except Exception:
                    continue
                return cls(*args, **kwargs)
            raise TypeError("did not find a valid type using the argument as a hint")

        return make_union

    cls = _dyn_class(base, node, base_kwargs)

    def make(*args: Any, extmethods: Any = None, **kwargs: Any) -> Any:
        if extmethods:
            return slow(*args, extmethods=extmethods, **kwargs)
        return cls(*args, **kwargs)

    make.cls = cls  # type: ignore[attr-defined]
    return make


def YANGDynClass(*args: Any, **kwargs: Any) -> Any:  # noqa: N802
    """General (slow) path for call sites the rewrite could not hoist: pyangbind's own."""
    return _pb.YANGDynClass(*args, **kwargs)


# --------------------------------------------------------------------------- lists
def YANGListType(*args: Any, **kwargs: Any) -> type:  # noqa: N802
    """A YANG list class; ``parent`` and ``path_helper`` come from the wrapping node."""
    try:
        keyname, listclass = args[0], args[1]
    except IndexError as exc:
        raise TypeError("A YANGList must be specified with a key value and a contained class") from exc
    is_container = kwargs.pop("is_container", False)
    yang_name = kwargs.pop("yang_name", False)
    yang_keys = kwargs.pop("yang_keys", False)
    user_ordered = kwargs.pop("user_ordered", False)
    extensions = kwargs.pop("extensions", None)
    if not isinstance(listclass, type):
        raise ValueError("contained class of a YANGList must be a class")
    keyed_entry = dyn_factory(base=listclass, yang_name=yang_name, is_container="container",
                              extensions=extensions)
    keyless_entry = dyn_factory(base=listclass, yang_name=yang_name, is_container=is_container,
                                extensions=extensions)
    key_yang_names: dict[str, str] = {}

    def key_yang_name(kn: str) -> str:
        if kn not in key_yang_names:
            key_yang_names[kn] = getattr(listclass(), kn).yang_name()
        return key_yang_names[kn]

    class YANGList:
        __slots__ = ("_members", "_keyval", "_contained_class", "_yang_keys", "_ordered")
        _pybind_generated_by = "YANGListType"

        def __init__(self, *a: Any, **kw: Any) -> None:
            self._ordered = bool(user_ordered)
            self._members: collections.OrderedDict[Any, Any] = collections.OrderedDict()
            self._members._user_ordered = bool(user_ordered)  # type: ignore[attr-defined]
            self._keyval = keyname
            self._contained_class = listclass
            self._yang_keys = yang_keys

        def __str__(self) -> str:
            return str(self._members)

        def __repr__(self) -> str:
            return repr(self._members)

        def __check__(self, v: Any) -> bool:  # noqa: PLW3201 - pyangbind's name
            return getattr(v, "__slots__", None) == listclass.__slots__

        def iteritems(self) -> Any:
            return self._members.items()

        def itervalues(self) -> Any:
            return self._members.values()

        def _key_to_native_key_type(self, k: Any) -> Any:
            if self._keyval is False:
                raise AttributeError("List does not have a key")
            if " " in self._keyval:
                raise AttributeError("Multiple key, string type should be used")
            return getattr(self._members[k], f"_get_{self._keyval}")()

        def __iter__(self) -> Any:
            return iter(self._members)

        def __contains__(self, k: Any) -> bool:
            return k in self._members

        def __getitem__(self, k: Any) -> Any:
            return self._members[k]

        def __setitem__(self, k: Any, v: Any) -> None:
            self._set_member(_k=k, _v=v)

        def _entry_kwargs(self, path_keystring: str) -> dict[str, Any]:
            kw: dict[str, Any] = {"parent": self._parent, "path_helper": self._path_helper,
                                  "extmethods": self._parent._extmethods}
            if self._path_helper:
                kw["register_path"] = self._parent._path() + [yang_name + path_keystring]
            return kw

        def _set_member(self, *a: Any, **kw: Any) -> Any:
            k = kw.pop("_k", None)
            v = kw.pop("_v", None)
            named_set = kw.pop("_named_set", False)
            if k is None and self._keyval and not named_set:
                k = a[0]
            elif k is None:
                k = str(uuid.uuid4())  # pyangbind uses uuid1, ~10x slower here
            update = False
            if v is not None:
                if not self.__check__(v):
                    raise ValueError(f"value must be set to an instance of {listclass}")
                update = True
            if k in self._members:
                update = True
            if not self._keyval:
                self._members[k] = keyless_entry(**self._entry_kwargs(""))
                return k
            try:
                if " " in self._keyval and not named_set:
                    keys = self._keyval.split(" ")
                    keyparts = k.split(" ")
                    if len(keyparts) != len(keys):
                        raise KeyError(f"YANGList key must contain all key elements ({keys})")
                    keydict = dict(zip(keys, keyparts, strict=True))
                elif named_set:
                    k = kw.pop("_python_key", None)
                    keydict = dict(kw)
                else:
                    if k == "":
                        raise KeyError("Cannot set a null key for a list entry!")
                    keydict = {self._keyval: k}
                path_keystring = "[" + " ".join(
                    f"{key_yang_name(kn)}='{keydict[kn]}'" for kn in self._keyval.split(" ")) + "]"
                ekw = self._entry_kwargs(path_keystring)
                tmp = keyed_entry(v, load=True, **ekw) if update else keyed_entry(**ekw)
                for kn, kv in keydict.items():
                    getattr(tmp, f"_set_{safe_name(kn)}")(kv, load=True)
                if getattr(k, "_referenced_object", None) is not None:
                    k = k._referenced_object
                self._members[k] = tmp
            except ValueError as m:
                raise KeyError(f"key value {self._keyval} must be valid, {m}") from m
            return None

        def __delitem__(self, k: Any) -> None:
            del self._members[k]

        def __len__(self) -> int:
            return len(self._members)

        def keys(self) -> Any:
            return self._members.keys()

        def items(self) -> Any:
            return self._members.items()

        def values(self) -> Any:
            return self._members.values()

        def _generate_key(self, *a: Any, **kw: Any) -> tuple[Any, Any]:
            if a:
                return a[0], None
            if kw:
                keyargs = {}
                for kn in self._keyval.split(" "):
                    if kn not in kw:
                        raise AttributeError("Keyword list add function must have all keys specified"
                                             f" - cannot find {kn}")
                    keyargs[kn] = kw[kn]
                return " ".join(str(kw[kn]) for kn in self._keyval.split(" ")), keyargs
            return None, None

        def _extract_key(self, obj: Any) -> Any:
            parts = self._keyval.split(" ")
            values = []
            for kn in parts:
                getter = getattr(obj, f"_get_{safe_name(kn)}", None)
                if getter is None:
                    raise KeyError(f"Invalid key attribute specified for object: {kn}")
                values.append(getter())
            return " ".join(str(x) for x in values) if len(parts) > 1 else values[0]

        def append(self, obj: Any) -> None:
            self._set_member(_k=self._extract_key(obj), _v=obj)

        def _new_item(self) -> Any:
            return listclass()

        def add(self, *a: Any, **kw: Any) -> Any:
            if a and kw:
                raise AttributeError("Cannot add an entry to a list based on both keywords and string args")
            value = kw.pop("_v", None)
            k, keyargs = self._generate_key(*a, **kw)
            if k in self._members:
                raise KeyError(f"{k} is already defined as a list entry")
            if self._keyval and keyargs is None:
                if k is None:
                    raise KeyError("a list with a key value must have a key specified")
                self._set_member(_k=k)
                return self._members[k]
            if self._keyval:
                keyargs["_python_key"] = k
                keyargs["_named_set"] = True
                if value is not None:
                    keyargs["_v"] = value
                self._set_member(**keyargs)
                return self._members[k]
            return self._set_member()

        def delete(self, *a: Any, **kw: Any) -> None:
            k, _ = self._generate_key(*a, **kw)
            try:
                del self._members[k]
            except KeyError as m:
                raise KeyError(f"key {k} was not in list ({m})") from m

        def _item(self, *a: Any, **kw: Any) -> Any:
            try:
                keystr = " ".join(str(kw[kn]) for kn in self._keyval.split(" "))
            except KeyError as exc:
                raise KeyError("Must specify all keys to retrieve a list entry") from exc
            return self._members[keystr]

        def get(self, filter: bool = False) -> Any:  # noqa: A002
            d: collections.OrderedDict[Any, Any] = collections.OrderedDict()
            d._user_ordered = self._members._user_ordered  # type: ignore[attr-defined]
            for i, m in self._members.items():
                d[i] = m.get(filter=filter) if hasattr(m, "get") else m
            return d

    return YANGList
