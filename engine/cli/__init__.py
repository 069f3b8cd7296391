"""`dermae`: the command line of DerMAE Studio. Every command but `serve` and `restore` talks to the engine over HTTP
(`backup` too, when a server runs; else it reads the database file, which no one holds then)."""

from __future__ import annotations

import typer

from engine.cli import backup, data, jobs, people, runs, serving

app = typer.Typer(help="DerMAE Studio: curate synthetic dermoscopy and train students on it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

# In the order `dermae --help` lists them.
app.command()(serving.serve)
app.command()(serving.up)
app.command()(serving.demo)
app.command("import")(data.import_)
app.command()(data.imports)
app.command()(runs.evaluate)
app.command()(data.stats)
app.add_typer(jobs.jobs_app, name="jobs")
app.command()(jobs.submit)
app.command()(jobs.pipeline)
app.command()(runs.compare)
app.command()(runs.train)
app.add_typer(data.datasets_app, name="datasets")
app.add_typer(people.users_app, name="users")
app.command()(people.policy)
app.command()(backup.backup)
app.command()(backup.restore)


def main() -> None:
    app()
