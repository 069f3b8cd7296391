"""Reviewer accounts (`dermae users`) and the review policy (`dermae policy`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from engine.cli.common import Workspace, call, client_for

users_app = typer.Typer(help="Reviewer accounts for the studio.", no_args_is_help=True)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Sign-in name: letters, digits, . _ -")],
    role: Annotated[str, typer.Option(help="admin | reviewer | viewer")] = "reviewer",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin "
                                                                         "(scripts) instead of prompting.")]
    = False,
    workspace: Workspace = None,
) -> None:
    """Add an account; the password is asked for twice (or read from stdin) and stored only as a salted hash."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    user = call(client_for(workspace).add_user, name, password, role)
    typer.echo(f"added {user.name} ({user.role})")


@users_app.command("ls")
def users_ls(workspace: Workspace = None) -> None:
    """Accounts and their roles."""
    for user in call(client_for(workspace).users):
        typer.echo(f"{user.name:<24} {user.role:<9} {user.created_at:%Y-%m-%d %H:%M}")


def policy(
    accepts: Annotated[int | None, typer.Argument(help="Set k: an image is accepted with k accepts and no "
                                                       "reject. Omit to show the policy in force.")] = None,
    blind: Annotated[bool | None, typer.Option("--blind/--no-blind", help="Blind reading: a reviewer sees no "
                                               "other reviewer's decision on an image until they have decided "
                                               "it (the default).")] = None,
    workspace: Workspace = None,
) -> None:
    """The review policy: k accepts and no reject, and blind reading."""
    client = client_for(workspace)
    changing = accepts is not None or blind is not None
    current = call(client.set_review_policy, accepts, blind) if changing else call(client.review_policy)
    typer.echo(f"accepted = {current.accepts_needed} accept(s) and no reject; reading is "
               f"{'blind' if current.blind else 'open (reviewers see each other’s decisions)'}"
               + (f" (set by {current.changed_by} at {current.changed_at:%Y-%m-%d %H:%M} UTC)"
                  if current.changed_by and current.changed_at else ""))


