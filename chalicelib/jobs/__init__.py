"""Jobs: the state machine, the lifecycle that moves a job through it, the doors work comes in by (intake), attempts and their verdicts, the documents the API shows, and the sweeper."""
