"""Screens pushed over the main one: confirmation, plan, help."""
