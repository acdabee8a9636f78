"""The run report (stage ``report``, ``lungxray report``): one self-contained HTML model card of a pipeline run, with
the reporting checklists (CLAIM 2024, TRIPOD+AI) filled in where the run can answer them.

Modules, in the order they build on each other: :mod:`.page` (HTML blocks, traced numbers, the style sheet),
:mod:`.run` (the outputs read, required and optional), :mod:`.figures` (per-class intervals and the reliability
diagram computed from the champion's predictions), :mod:`.summary` (section 1 and the rules behind the warnings and
limitations), :mod:`.data_section`, :mod:`.model_sections`, :mod:`.repro_section`, :mod:`.checklist` (sections 2 to
8), :mod:`.build` (the page) and :mod:`.publish` (the artifact and link in MLflow).

Each module's names without a leading underscore are its public API. The modules are imported by name
(``from lungxray.report.<module> import ...``), never all at once here, so that the stage's code closure (its
``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["page", "run", "figures", "summary", "data_section", "model_sections", "repro_section", "checklist",
           "build", "publish"]
