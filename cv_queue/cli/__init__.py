"""`cv-queue`: the command line for the broker, topics, jobs, workers, status and the DLQ."""
