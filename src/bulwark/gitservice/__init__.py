"""The git service behind every transport: who may fetch or push, and the git process that serves it."""
