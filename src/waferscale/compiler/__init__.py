"""The compiler: capture -> ir -> lower -> plan -> place -> route -> program (docs/compiler.md).

The entry points that also *run* the result, `waferscale.compile` (`waferscale.api`) and
the ``waferscale`` backend of ``torch.compile`` (`waferscale.backend`), sit above the
runtime, outside this package: the compiler itself never imports the runtime. Submodules
are imported lazily by callers so that importing the package stays cheap.
"""
