"""The ``refusal-lens`` command line."""

import typer

app = typer.Typer(
    name="refusal-lens",
    help="Find out why a chat model refuses: directions, SAE features, ablations, probes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)



def _version(value: bool) -> None:
    if value:
        from refusal_lens import __version__

        typer.echo(f"refusal-lens {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit."),
         debug: bool = typer.Option(False, "--debug", help="Show an error's full traceback instead of one line.")) -> None:
    """Find out why a chat model refuses."""
    common.show_tracebacks(debug)


from refusal_lens.cli import common, datasets_cmd, eval_cmd, features_cmd, organism_cmd, pipeline_cmd  # noqa: E402

for module in (eval_cmd, datasets_cmd, organism_cmd, pipeline_cmd, features_cmd):
    module.register(app)
