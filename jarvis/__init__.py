"""Shared core of JARVIS Voice Engine: member context, database access, local stack."""
