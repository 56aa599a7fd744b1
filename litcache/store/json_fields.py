"""Reading a store's manifest key by key: each missing or wrong value is one ``ManifestError`` that
names its key path, what was expected and what was found; ``FrozenMapping`` is a read-only JSON object."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ManifestError
from .encoding import CODECS, DTYPES

__all__ = ["FrozenMapping", "Expect", "JsonObject", "COUNT", "POSITIVE", "INTEGER",
           "STRING", "BOOL", "SECONDS", "SHAPE", "STRINGS", "CODEC", "DTYPE"]


class FrozenMapping(Mapping):
    """A read-only mapping. Dict and list values come back as copies, so nothing reached through it changes it."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only; make a new one (dataclasses.replace "
                             "on the manifest).")

    def __reduce__(self):
        return type(self), (self._data,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def to_dict(self) -> dict:
        """A plain (JSON-able) dict; records inside become their ``to_dict()``."""
        return {key: value.to_dict() if hasattr(value, "to_dict") else copy.deepcopy(value)
                for key, value in self._data.items()}


@dataclass(frozen=True)
class Expect:
    """What a value must be: ``test``, and ``what`` that is, as an error says it ("an integer >= 0")."""

    test: Callable[[Any], bool]
    what: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_shape(v) -> bool:
    return isinstance(v, list) and all(_is_int(n) and n >= 0 for n in v)


INTEGER = Expect(_is_int, "an integer")
COUNT = Expect(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
POSITIVE = Expect(lambda v: _is_int(v) and v >= 1, "an integer >= 1")
STRING = Expect(lambda v: isinstance(v, str), "a string")
BOOL = Expect(lambda v: isinstance(v, bool), "true or false")
SECONDS = Expect(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                 "a number of seconds >= 0")
SHAPE = Expect(_is_shape, "a list of integers >= 0")
STRINGS = Expect(lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings")
CODEC = Expect(lambda v: v in CODECS, f"one of {', '.join(map(repr, CODECS))}")
DTYPE = Expect(lambda v: v in DTYPES, f"one of {', '.join(map(repr, DTYPES))}")  # of stored activations


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class JsonObject:
    """One JSON object of a manifest at key path ``path`` (of the store at ``where``), read key by key."""

    def __init__(self, value: Any, path: str, where: str | None) -> None:
        if not isinstance(value, dict):
            problem = f"holds {_shown(value)} at {path} where an object is expected" if path else "is not a JSON object"
            raise ManifestError.at(where, problem)
        self.value, self.path, self.where = value, path, where

    def key_path(self, key: str) -> str:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            return f"{self.path}.{key}" if self.path else key
        return f"{self.path}[{key!r}]"  # e.g. arrays['boundaries/0']

    def wrong(self, key: str, expected: str) -> None:
        """Refuse the value at ``key``: it is not ``expected``."""
        raise ManifestError.at(self.where,
                               f"holds {_shown(self.value[key])} at {self.key_path(key)} where {expected} is expected")

    def get(self, key: str, expect: Expect) -> Any:
        if key not in self.value:
            raise ManifestError.at(self.where, f"lacks {self.key_path(key)}")
        if not expect.test(self.value[key]):
            self.wrong(key, expect.what)
        return self.value[key]

    def object(self, key: str) -> "JsonObject":
        if key not in self.value:
            raise ManifestError.at(self.where, f"lacks {self.key_path(key)}")
        return JsonObject(self.value[key], self.key_path(key), self.where)

    def items(self, key: str) -> list["JsonObject"]:
        """The objects of the list at ``key``."""
        items = self.get(key, Expect(lambda v: isinstance(v, list), "a list"))
        return [JsonObject(item, f"{self.key_path(key)}[{i}]", self.where) for i, item in enumerate(items)]

    def records(self, read: Callable[["JsonObject"], Any]) -> FrozenMapping:
        """Every value of this object read as a record: ``{key: read(object at key)}``."""
        return FrozenMapping({key: read(self.object(key)) for key in self.value})

    def values_of(self, expect: Expect) -> FrozenMapping:
        """This object, each of its values checked against ``expect``."""
        return FrozenMapping({key: self.get(key, expect) for key in self.value})
