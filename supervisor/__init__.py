"""Supervise the Claude Code CLI."""
