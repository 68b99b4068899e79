"""The compiler: capture -> ir -> lower -> plan -> place -> route -> program (docs/compiler.md).

`waferscale.compile` (in :mod:`api`) is the entry point; :mod:`backend` registers the
``waferscale`` backend of ``torch.compile``. Submodules are imported lazily by callers so
that importing the package stays cheap.
"""
