"""The D-Bus front end: caller identity, authorization, dispatch, error mapping.

Nothing in the engine imports this package; it only translates.
"""
