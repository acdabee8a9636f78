"""The params reference: every field of every section, with its type, default and description
(``lungxray check-params --explain [SECTION ...]``).

It is read off the section classes themselves (:class:`lungxray.cli.params_check.Params` and the models they nest), so
it cannot drift from what the stages accept. Nested models are shown with dotted keys (``train.augment.degrees``); a
mapping of models with ``<name>`` (``train.model_options.<name>.lr``); a list of sources once per kind
(``fetch.sources[kind=folder].path``). Stage scripts never import it (it imports :mod:`lungxray.cli.params_check`).
"""

from __future__ import annotations

import json
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from lungxray.cli.params_check import Params
from lungxray.core.errors import ConfigError

__all__ = ["FieldDoc", "sections", "section_fields", "params_models", "explain"]


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted, e.g. train.augment.degrees
    type: str  # e.g. "int >= 1", "adam | adamw | sgd"
    default: str  # "required" when there is none
    description: str


def sections() -> dict[str, type[BaseModel]]:
    """Section name (as written in params.yaml) -> its class, in file order."""
    return {(f.alias or name): _models_in(f.annotation)[0] for name, f in Params.model_fields.items()}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (itself, or inside Optional / list / dict / Union / Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def params_models() -> list[type[BaseModel]]:
    """Every model reachable from the sections (nested models and each kind of source included), each once."""
    seen: dict[type[BaseModel], None] = {}

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen[model] = None
        for f in model.model_fields.values():
            for m in _models_in(f.annotation):
                walk(m)

    for model in sections().values():
        walk(model)
    return list(seen)


def _strip(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _type_name(annotation: Any) -> str:
    annotation = _strip(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is Union or type(annotation).__name__ == "UnionType":
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_BOUNDS = ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<"))


def _constraints(info: FieldInfo) -> str:
    out = []
    for item in info.metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(item, cls):
                out.append(f"{sign} {getattr(item, attr)}")
        if isinstance(item, at.MinLen) and item.min_length:
            out.append(f"at least {item.min_length}")
    return (" " + ", ".join(out)) if out else ""


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(see below)"
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, default=str)


def _rows(model: type[BaseModel], prefix: str) -> Iterator[FieldDoc]:
    for name, info in model.model_fields.items():
        key = f"{prefix}.{info.alias or name}"
        yield FieldDoc(key, _type_name(info.annotation) + _constraints(info), _default(info), info.description or "")
        inner = _strip(info.annotation)
        if typing.get_origin(inner) is Union or type(inner).__name__ == "UnionType":
            inner = next((a for a in typing.get_args(inner) if a is not type(None)), inner)
        origin = typing.get_origin(inner)
        args = [_strip(a) for a in typing.get_args(inner)]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _rows(inner, key)
        elif origin is dict and _models_in(args[1]):
            yield from _rows(_models_in(args[1])[0], f"{key}.<name>")
        elif origin is list and _models_in(args[0]):
            kinds = _models_in(args[0])
            for m in kinds:
                kind = typing.get_args(m.model_fields["kind"].annotation) if "kind" in m.model_fields else ()
                yield from _rows(m, f"{key}[kind={kind[0]}]" if len(kinds) > 1 and kind else f"{key}[]")


def section_fields(section: str) -> list[FieldDoc]:
    """Every field of ``section`` (nested ones included), in class order."""
    return list(_rows(sections()[section], section))


def explain(names: list[str] | None = None, width: int = 100) -> str:
    """The reference of the given sections (all when none), as text for a terminal."""
    known = sections()
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; the sections are: {', '.join(known)}")
    blocks = []
    for section in names or list(known):
        lines = [f"{section}:"]
        for row in section_fields(section):
            lines.append(f"  {row.key}  [{row.type}]  default: {row.default}")
            lines += textwrap.wrap(row.description or "(no description)", width, initial_indent="      ",
                                   subsequent_indent="      ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
