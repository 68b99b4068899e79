"""Reports: the dicts the commands print, built here so tests and benchmarks share them.

`waferscale.report.validation.validation_cases()` is the table behind
``waferscale validate``; `waferscale.report.compile` holds ``compile_report``,
``run_report`` and ``write_map`` behind ``waferscale compile``, ``run`` and ``demo``.
Modules are imported on use so that the package stays cheap to import from the CLI.
"""
