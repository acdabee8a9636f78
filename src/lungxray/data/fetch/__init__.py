"""The fetch stage: list every image of every source, map its label onto the taxonomy, and probe it.

``run_fetch(params)`` writes:

* ``data/interim/manifest.csv``: one row per usable image (columns in :data:`lungxray.core.schema.MANIFEST_COLUMNS`);
* ``data/interim/rejected.csv``: every file with an image extension that could not be used, with the reason;
* ``reports/fetch_summary.json``: counts per source and label, dropped, rejected and ignored files.

A raw label that the source's map does not cover stops the stage (naming the label, the source and an example file)
before any image is decoded. Undecodable, empty, truncated and oversized images never crash the stage; they go to the
rejected report.

The package, one job per module: :mod:`.listing` (list each source's image files and read their raw labels, patient
ids and official splits; check the label maps), :mod:`.probing` (read and decode each file in worker processes, with
the probe cache) and :mod:`.manifest` (:func:`run_fetch`: the steps in order, then the manifest, the rejected list
and the summary).
"""

from lungxray.data.fetch.manifest import run_fetch, summary_text

__all__ = ["run_fetch", "summary_text"]
