"""Business rules: the one place that decides who may do what to which record."""
