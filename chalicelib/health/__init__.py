"""A stage's health: what the doctor (`proofline doctor`) and `GET /health?deep=1` check, and
what their checks conclude, in words."""
