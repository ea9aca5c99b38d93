"""What runs the round assets: jobs, schedules, sensors, the round guard and the instance settings
(docs/architecture.md)."""
