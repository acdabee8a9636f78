"""Reading X-rays: decoding image files and DICOM into greyscale arrays (``decode``, ``dicom``), pixel rules
(``pixels``) and on-device augmentation (``augment``); ``alterations`` makes the altered copies (resized, squashed,
re-encoded...) that the dedupe is measured on. Imports only ``core``.

Each module's names without a leading underscore are its public API; an underscore name is the module's own.
The modules are listed in ``__all__`` and imported by name (``from lungxray.images.<module> import ...``), never all
at once here, so that a stage's code closure (its ``dvc.yaml`` deps) holds only the modules it uses."""

__all__ = ["alterations", "augment", "decode", "dicom", "pixels"]
