"""Jobs: the scheduler inside the engine server, the executor that starts job processes, and the job-process
side (entry point `python -m engine.jobs.run JOB_ID` and the `JobContext` that recipes report through)."""
