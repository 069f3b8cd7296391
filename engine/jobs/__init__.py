"""Jobs: the scheduler inside the engine server, the executor that starts job processes, and the job-process
side (the `JobContext` that recipes report through; the entry point is `python -m engine.worker JOB_ID`)."""
