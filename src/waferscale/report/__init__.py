"""Reports: validation against published measurements, and (later) text, JSON and HTML.

`waferscale.report.validation.validation_cases()` is the table behind
``waferscale validate``. Modules are imported on use so that the package stays cheap to
import from the CLI.
"""
