"""One module per job kind: a pydantic `Params` model and a `run(params, ctx)` function.

Recipes never touch the database: they report through the job context (`engine.jobs.context.JobContext`).
Their module level stays light (no torch import) because the engine server imports them to validate params.
"""
