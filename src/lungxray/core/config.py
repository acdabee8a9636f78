"""The typed configuration in ``params.yaml``: the strict base model, the ``fetch`` section, and the section loader.

Each stage loads only its own section(s) with :func:`load_section`, validated by the section class that its module
defines (each derives from :class:`Strict`): an unknown key or a value of the wrong type stops the stage with a
message that names the key (``fetch.sources[1].kind``, ``dedupe.workers``) and what was expected, instead of being
silently ignored. This module imports no stage module; ``lungxray check-params`` (:mod:`lungxray.cli.params_check`)
assembles and checks the whole file.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from lungxray.core.errors import ConfigError
from lungxray.core.schema import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

DEFAULT_PARAMS = Path("params.yaml")
DROP = "drop"
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    """Base for every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


class CsvLabels(Strict):
    """Labels (and optionally patient ids) read from one or more CSV files that sit beside the images."""

    files: list[str] = Field(min_length=1, description="CSV files, relative to the source root")
    filename_column: str = Field("filename", description="column naming each image file")
    label_column: str = Field("label", description="column holding each image's raw label")
    patient_column: str | None = Field(None, description="column holding the patient id (used before patient.regex); "
                                                         "None = no patient column")
    match_on: Literal["name", "stem", "path"] = Field(
        "name", description="how a CSV file name finds its image: by file name, by name without extension, or by "
                            "path relative to root")
    unlisted_label: str = Field("UNLISTED", description="raw label of an image no CSV row names (map it in labels, "
                                                        "e.g. to drop)")
    blank_label: str = Field("(blank)", description="raw label of a CSV row whose label cell is empty")
    encoding: str | None = Field(None, description="CSV text encoding; default: try utf-8, cp1252, then latin-1")


class PatientSpec(Strict):
    """How to read a patient id: a metadata column (CSV layout) and/or a regex over the file name.

    The regex's first non-empty capture group is the id. ``namespace`` lets several sources that contain the same
    patients (e.g. re-publications of the Kermany set) share the ids read from file names; it defaults to the source
    name. Ids from a metadata column (``csv.patient_column``, used first) are always namespaced by the source.
    """

    regex: str | None = Field(None, description="regex over the file name; its first non-empty capture group is the "
                                                "patient id; None = no id from the name")
    namespace: str | None = Field(None, description="prefix of the ids read from file names, shared by sources of the "
                                                    "same patients; None = the source name")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                pattern = re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from e
            if pattern.groups < 1:
                raise ValueError("the regex needs at least one capture group, e.g. 'person(\\d+)_'")
        return v


class _FolderLike(Strict):
    """Fields shared by every source whose content ends up as a folder tree of image files."""

    name: Annotated[str, Field(pattern=_NAME_RE)] = Field(description="unique source name (data/raw/<name>, the "
                                                                      "manifest's source column)")
    labels: dict[str, str] = Field(description="raw label -> class of the taxonomy, or 'drop'")
    layout: Literal["class_folders", "csv"] = Field(
        "class_folders", description="where the raw label comes from: the image's folder name, or label CSVs (csv:)")
    root: str | None = Field(None, description="sub-folder of the source that holds the images")
    include: list[str] = Field(default_factory=list, description="glob patterns (relative to root) to keep")
    exclude: list[str] = Field(default_factory=list, description="glob patterns (relative to root) to skip")
    label_level: int = Field(-1, description="for class_folders: which parent folder names the class (-1 = parent)")
    csv: CsvLabels | None = Field(None, description="the label CSVs; required with layout: csv, refused otherwise")
    patient: PatientSpec | None = Field(None, description="how to read patient ids; None = no ids from file names")
    official_split: Literal["from_path", "train", "val", "test"] | None = Field(
        None, description="the source's official split: from_path (a folder such as train/val/test in the image's "
                          "path), one split for every image, or None (none)")

    @model_validator(mode="after")
    def _layout_needs_csv(self) -> "_FolderLike":
        if self.layout == "csv" and self.csv is None:
            raise ValueError("layout 'csv' needs a 'csv' section (files, filename_column, label_column)")
        if self.layout == "class_folders" and self.csv is not None:
            raise ValueError("'csv' is only used with layout: csv")
        if self.label_level >= 0:
            raise ValueError("label_level counts parent folders from the file upwards: -1 (parent), -2, ...")
        return self


class FolderSource(_FolderLike):
    """A local folder of images (linked, not copied, as data/raw/<name>)."""

    kind: Literal["folder"] = Field(description="source kind: folder")
    path: str = Field(description="the folder, relative to the repository root or absolute")


class KaggleSource(_FolderLike):
    """A Kaggle dataset, downloaded (or reused from its cache) with kagglehub."""

    kind: Literal["kaggle"] = Field(description="source kind: kaggle")
    dataset: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")] = Field(description="Kaggle handle <owner>/<name>")
    version: int | None = Field(None, description="dataset version to pin; None = the latest")


class ArchiveSource(_FolderLike):
    """A .zip / .tar(.gz) archive, checked against its sha256 and extracted."""

    kind: Literal["archive"] = Field(description="source kind: archive")
    path: str | None = Field(None, description="local archive file (give exactly one of path and url)")
    url: str | None = Field(None, description="http(s) URL to download the archive from (give exactly one of path "
                                              "and url)")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] = Field(description="expected sha256 of the archive")

    @model_validator(mode="after")
    def _one_location(self) -> "ArchiveSource":
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' or 'url'")
        return self


class MedmnistSource(Strict):
    """A MedMNIST .npz file; its train/val/test arrays become the official split."""

    kind: Literal["medmnist"] = Field(description="source kind: medmnist")
    name: Annotated[str, Field(pattern=_NAME_RE)] = Field(description="unique source name (data/raw/<name>, the "
                                                                      "manifest's source column)")
    path: str | None = Field(None, description="local .npz file (give exactly one of path and url)")
    url: str | None = Field(None, description="http(s) URL of the .npz (needs sha256; give exactly one of path "
                                              "and url)")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = Field(
        None, description="expected sha256 of the .npz; required with url, optional with path")
    labels: dict[str, str] = Field(description="label index as a string ('0', '1') -> class, or 'drop'")

    @model_validator(mode="after")
    def _one_location(self) -> "MedmnistSource":
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' or 'url'")
        if self.url is not None and self.sha256 is None:
            raise ValueError("a medmnist 'url' needs its expected 'sha256'")
        return self


Source = Annotated[
    Union[FolderSource, KaggleSource, ArchiveSource, MedmnistSource], Field(discriminator="kind")
]


class FetchParams(Strict):
    classes: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]] = Field(
        default_factory=lambda: ["normal", "pneumonia", "covid19", "tuberculosis", "lung_opacity"],
        description="the taxonomy: the classes every model predicts, in this order (unique; 'drop' is reserved)",
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="larger images are rejected (decompression bombs)")
    image_extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS),
                                        description="file extensions read as images; other files are counted and "
                                                    "ignored")
    workers: int = Field(0, ge=0, description="processes used to read images; 0 = one per core")
    download_timeout_s: float = Field(60.0, gt=0, description="seconds an archive / MedMNIST download may wait on "
                                                              "the network")
    sources: list[Source] = Field(min_length=1, description="where the images come from, one entry per source (kind: "
                                                            "folder, kaggle, archive or medmnist); names are unique")

    @model_validator(mode="after")
    def _check(self) -> "FetchParams":
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        if DROP in self.classes:
            raise ValueError(f"'{DROP}' is reserved (it marks raw labels to drop)")
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        allowed = set(self.classes) | {DROP}
        for s in self.sources:
            bad = {raw: tgt for raw, tgt in s.labels.items() if tgt not in allowed}
            if bad:
                raw, tgt = next(iter(bad.items()))
                raise ValueError(
                    f"source '{s.name}': label '{raw}' maps to '{tgt}', which is not a class; "
                    f"use one of {sorted(allowed)}"
                )
        return self


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin} is invalid:"]
    for e in err.errors():
        key = ""
        for part in e["loc"]:
            if isinstance(part, int):
                key += f"[{part}]"
            elif part in ("folder", "kaggle", "archive", "medmnist") and key.endswith("]"):
                continue  # discriminator branch, not a key the user wrote
            else:
                key += f".{part}" if key else str(part)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `lungxray check-params --explain` lists the valid keys)"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        lines.append(f"  - {key or '(top level)'}: {msg}")
    return "\n".join(lines)


class DuplicateKey(yaml.constructor.ConstructorError):
    """One mapping of a YAML file holds the same key twice."""

    def __init__(self, key: Any, first: yaml.Node, second: yaml.Node):
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=second.start_mark)
        self.key, self.lines = key, (first.start_mark.line + 1, second.start_mark.line + 1)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last one silently).
    Keys brought in by a merge key (``<<: *anchor``) may be overridden: that is what merging is for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first is not key_node:
                    raise DuplicateKey(key, first, key_node)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKey` when a mapping holds the same key twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader


def read_params_file(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The params file as a mapping of sections (not validated yet). A key given twice in one section (or a section
    given twice) is an error that names both lines: YAML would keep the last value without a word."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the repository root, or pass the params file explicitly")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKey as e:
        raise ConfigError(f"{path}: the key {e.key!r} is given twice at the same level, at line {e.lines[0]} and "
                          f"line {e.lines[1]}; YAML would keep only the last value: delete one of them") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of sections (fetch:, dedupe:, ...), got {type(data).__name__}")
    return data


def validate_model(cls: type[M], data: Any, origin: str) -> M:
    """``cls`` validated from ``data``; an error names every bad key as the params file spells it."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, origin)) from None


def load_section(name: str, cls: type[M], path: str | Path = DEFAULT_PARAMS) -> M:
    """The section ``name`` of the params file, validated with ``cls`` (its defaults where the file has none).

    Only this section is read: a stage does not stop on an error in another stage's section (``lungxray
    check-params`` checks the whole file; ``make run`` runs it first). Errors name the key as ``name.key``.
    """
    return getattr(load_sections({name: cls}, path), name)


def load_sections(sections: dict[str, type[Strict]], path: str | Path = DEFAULT_PARAMS) -> SimpleNamespace:
    """Several sections at once: ``{name: section class}`` -> ``params.<name>``, each validated by its class."""
    return parse_sections(read_params_file(path), sections, str(path))


def parse_sections(data: dict[str, Any], sections: dict[str, type[Strict]], origin: str = "params.yaml"
                   ) -> SimpleNamespace:
    """The named sections of ``data`` (a parsed params file), validated; other sections are not looked at."""
    model = create_model("Sections", __base__=Strict, **{
        _field_name(name): (cls, Field(default_factory=cls, alias=name) if name != "fetch" else Field(alias=name))
        for name, cls in sections.items()})
    parsed = validate_model(model, {name: data[name] for name in sections if name in data}, origin)
    return SimpleNamespace(**{name: getattr(parsed, _field_name(name)) for name in sections})


def _field_name(section: str) -> str:
    return section + "_"  # never clashes with a BaseModel attribute (e.g. `validate`)
