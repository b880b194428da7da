"""The test suite: `make unit` runs the fast tier, `make test` all of it."""
