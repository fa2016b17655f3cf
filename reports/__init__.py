"""Leaderboard, speed and reference reports generated from local runs and measurements."""
