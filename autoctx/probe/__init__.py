"""Probing the machine: CPU features now; GPU and RAM free memory arrive with the planner."""
