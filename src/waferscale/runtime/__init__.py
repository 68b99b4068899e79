"""Run-time behaviour of a wafer: faults that appear while a program runs, and recovery."""

from waferscale.runtime.faults import Checkpoint, Fault, run_with_faults

__all__ = ["Checkpoint", "Fault", "run_with_faults"]
