"""Pipeline stages run by the launcher; each reads its inputs from the workdir and skips done work."""
