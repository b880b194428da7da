"""Backups: consistent points, snapshots, restores."""
