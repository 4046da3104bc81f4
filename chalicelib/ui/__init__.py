"""The job page: what a job's client (or an operator) sees of it in a browser."""
