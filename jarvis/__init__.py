"""Production core of JARVIS Voice Engine: member context, database access, the session contract
and store settings shared by the token service and the worker."""
