"""Jobs (seed 002's execute / poll) and agent sessions, served as interlock.jobs.v1.JobService
from the usage process, which already owns the durable store."""
