"""`waferscale train`: train a model on genomes on the simulated wafer.

The main CLI calls `register(app)`. The command runs under the main CLI's error contract
(`waferscale.cli_contract._guard`); the work is `waferscale.train.train_on_genomes`, this module
only parses options and prints (a rich progress bar with step, loss and simulated
samples/s, quiet under ``--json``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from waferscale.cli_contract import JsonOpt


def register(app: typer.Typer) -> None:
    """Add ``train`` to the main CLI's ``app``."""

    @app.command(name="train")
    def train(model: Annotated[str, typer.Argument(help="preset (genslm-25m, ...) or "
                                                        "file.py:factory")],
              fasta: Annotated[str, typer.Option("--fasta", help="genomes (FASTA) to train on")],
              steps: Annotated[int, typer.Option("--steps", help="optimizer steps")] = 10,
              batch: Annotated[int, typer.Option("--batch", help="samples per step")] = 1,
              seq: Annotated[int, typer.Option("--seq", help="codons per sample")] = 256,
              lr: Annotated[float, typer.Option("--lr", help="learning rate")] = 1e-4,
              optimizer: Annotated[str, typer.Option(
                  "--optimizer", help="adamw or sgd (momentum 0.9)")] = "adamw",
              mode: Annotated[str, typer.Option(
                  "--mode", help="auto, pipelined or weight-streaming")] = "auto",
              layers: Annotated[int | None, typer.Option(
                  "--layers", help="keep the first N decoder layers (quick runs)")] = None,
              checkpoint: Annotated[str | None, typer.Option(
                  "--checkpoint", help="directory: save a checkpoint after every step")]
              = None,
              resume: Annotated[bool, typer.Option(
                  "--resume", help="continue from the checkpoint in --checkpoint")] = False,
              eager: Annotated[bool, typer.Option(
                  "--eager", help="also train in eager PyTorch and compare the losses")]
              = False,
              spec: Annotated[str, typer.Option("--spec", help="wse1, wse2, wse3 or a .toml")]
              = "wse2",
              systems: Annotated[int, typer.Option(
                  "--systems", help="simulated systems sharing each step's --batch (data "
                                    "parallel on Ray; 1 = this process)")] = 1,
              address: Annotated[str | None, typer.Option(
                  "--address", help="with --systems N: join this Ray cluster (default: "
                                    "RAY_ADDRESS or a local Ray)")] = None,
              json_out: JsonOpt = False) -> None:
        """Train MODEL on genomes: forward and backward on the simulated wafer, the
        optimizer in MemoryX; loss and simulated samples/s per step. --systems N splits
        each step's batch over N simulated systems (SwarmX sums their gradients)."""
        from waferscale.cli_contract import _emit, _guard, console

        def body() -> None:
            import contextlib
            import sys

            from waferscale.train import train_on_genomes

            kwargs: dict[str, Any] = dict(steps=steps, batch=batch, seq=seq, lr=lr,
                                          optimizer=optimizer, mode=mode, spec=spec,
                                          layers=layers, checkpoint_dir=checkpoint,
                                          resume=resume, eager=eager, systems=systems,
                                          address=address)
            # Ray reports a lost worker on stdout; keep stdout for the JSON document
            quiet = (contextlib.redirect_stdout(sys.stderr) if systems > 1
                     else contextlib.nullcontext())
            if json_out:
                with quiet:
                    rep = train_on_genomes(model, fasta, **kwargs)
                _emit(rep)
                return
            from rich.progress import Progress

            # the bar starts with the first step, so a bad input prints only its error line
            bar = Progress(console=console)
            task = bar.add_task("training", total=steps)

            started: list[bool] = []

            def show(r: Any) -> None:
                if not started:
                    bar.start()
                    started.append(True)
                bar.update(task, completed=r.step,
                           description=f"step {r.step}  loss {r.loss:.4f}  "
                                       f"{r.samples_per_second:,.1f} samples/s ({r.mode})")

            try:
                with quiet:
                    rep = train_on_genomes(model, fasta, on_step=show, **kwargs)
            finally:
                if started:
                    bar.stop()
            console.print(f"{rep['model']}: {len(rep['losses'])} steps, loss "
                          f"{rep['losses'][0]:.4f} -> {rep['losses'][-1]:.4f}, "
                          f"{rep['samples_per_second']:,.2f} simulated samples/s "
                          f"({rep['mode']}), {rep['wall_seconds']:.1f} s here")
            if "eager_losses" in rep:
                console.print(f"eager: loss {rep['eager_losses'][-1]:.4f}, max |difference| "
                              f"{rep['max_loss_difference']:.2e}, "
                              f"{rep['eager_wall_seconds']:.1f} s here")
            if rep["checkpoint"]:
                console.print(f"checkpoint: {rep['checkpoint']}")
            for f in rep.get("faults", []):
                console.print(f"fault at step {f['step']}: lost {', '.join(f['lost'])}; "
                              f"{f['action']}")

        _guard(body)


__all__ = ["register"]
