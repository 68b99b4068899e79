"""Kernels: one module per family, each with run() on the fabric and cost() in closed form.

Families: gemm (SUMMA, Cannon, MeshGEMM), gemv (chain, K-tree), attention, norm,
elementwise, embedding, loss, stencil. `choose` picks a grid, tiling and algorithm for a
GEMM or GEMV from the closed-form costs. Import the family modules directly
(``from waferscale.kernels import gemm``); this package imports nothing eagerly so that a
family being edited cannot break the others.
"""
