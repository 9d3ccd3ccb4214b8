"""``llorch pools``: the registry's view of GPU pools, their GPUs and workers."""

from __future__ import annotations

from typing import Annotated

import typer

from llorch.render import render_pool, render_pools
from llorch.session import JsonOpt, Session

__all__ = ["app"]

app = typer.Typer(
    name="pools",
    help="Show GPU pools: status, GPUs with VRAM use, workers with model and state.",
    no_args_is_help=True,
)


@app.command("list")
def list_pools(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List registered pools with status, VRAM use, workers and heartbeat age."""
    sess = Session.of(ctx)
    out = sess.out(json_out)
    pools = sess.client().pools()
    if out.json_mode:
        out.json({"pools": [p.model_dump(mode="json") for p in pools]})
        return
    if not pools:
        out.status("no pools registered")
    render_pools(out, pools, sess.seams.clock())


@app.command()
def show(
    ctx: typer.Context,
    pool_id: Annotated[str, typer.Argument(metavar="ID", help="The pool to show.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one pool: its GPUs with VRAM bars and its workers with model and state."""
    sess = Session.of(ctx)
    out = sess.out(json_out)
    pool = sess.client().pool(pool_id)
    if out.json_mode:
        out.json(pool.model_dump(mode="json"))
        return
    render_pool(out, pool, sess.seams.clock())
