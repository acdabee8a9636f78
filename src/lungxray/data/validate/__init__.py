"""Data validation of the manifest and the dedupe groups table with great-expectations (GX 1.x).

The suite runs on an *ephemeral* (in-memory) GX context with analytics switched off, so it needs no project folder and
never touches the network. Checks that GX cannot express on a row directly (does the file exist, how many images per
class, how many kept images per dedupe group, is every manifest id in the groups table) are computed with pandas into
derived columns / small derived tables first, and GX then checks those.

Checks (table: what):

* manifest: every column of :data:`lungxray.core.schema.MANIFEST_COLUMNS` exists; text / integer columns have the right
  type; ``id``, ``source``, ``path``, ``label``, ``sha256``, ``width``, ``height`` are never empty; ``label`` is a
  class of the taxonomy; ``official_split`` is train / val / test (or empty); ``id`` and ``path`` are unique;
  ``width`` / ``height`` lie within the bounds of :class:`ValidateParams`; ``sha256`` is 64 hex digits; ``bytes`` > 0;
  every file exists under ``root`` (optional); every id is in the groups table.
* groups: the columns ``id, path, source, label`` and :data:`lungxray.core.schema.GROUPS_CONTRACT_COLUMNS` exist; ``id``
  unique and not empty; ``group`` not empty; ``kept`` / ``label_conflict`` / ``readable`` are booleans; dedupe could
  read every image; every id is in the manifest.
* group_kept (derived, one row per dedupe group): the label-conflict contract of :mod:`lungxray.core.schema`: exactly
  one kept image, none when the group was dropped for a label conflict; the kept image carries the group's resolved
  label (the manifest's label, which split uses); ``label_conflict``, ``conflict_action`` and ``resolved_label`` are
  what :func:`lungxray.core.schema.conflict_outcome` gives for the group's labels.
* class_counts (derived, one row per required class): at least ``min_per_class`` images.

``required_classes`` defaults to **every class of the taxonomy** (the ``classes`` argument), not only those that
appear: a declared class without images would silently give a classifier a class it never sees, so it fails unless
``min_per_class`` is 0 or ``required_classes`` leaves it out. Class counts are taken over the *kept* (deduplicated)
images by default (``count_kept_only``), because those are what the model trains and is tested on.

The package, one job per module: :mod:`.suites` (the expectations of each table and the derived tables they run on),
:mod:`.runner` (:func:`validate_tables`: the derived columns, then every suite on the ephemeral GX context) and
:mod:`.report` (the result, its terminal summary and the JSON / data-docs report); :mod:`.params` holds the settings.
"""

from lungxray.data.validate.params import MAX_EXAMPLES, ValidateParams
from lungxray.data.validate.report import Failure, ValidationResult, format_failures, write_report
from lungxray.data.validate.runner import validate_tables

__all__ = ["MAX_EXAMPLES", "Failure", "ValidateParams", "ValidationResult", "format_failures", "validate_tables",
           "write_report"]
