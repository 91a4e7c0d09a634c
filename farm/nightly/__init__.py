"""Nights: sweeps, schedules fired by `farm beat`, regression detection and webhooks."""
